"""dispatch/common"""
