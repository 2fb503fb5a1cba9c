"""capmill.train"""
