"""capmill.models"""
