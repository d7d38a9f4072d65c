"""dispatch/pipeline"""
