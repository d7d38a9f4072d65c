"""dispatch/runtime"""
