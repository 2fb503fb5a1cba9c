"""capmill.serve"""
