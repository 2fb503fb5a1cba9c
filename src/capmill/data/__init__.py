"""Sources -> items -> decoded images ... records -> sinks; and the resume ledger."""
