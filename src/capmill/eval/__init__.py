"""capmill.eval"""
