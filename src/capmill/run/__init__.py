"""capmill.run"""
