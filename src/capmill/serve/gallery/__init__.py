"""Static files of the web gallery (served by capmill.serve.gallery_routes)."""
