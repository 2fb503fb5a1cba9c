"""capmill.schema"""
