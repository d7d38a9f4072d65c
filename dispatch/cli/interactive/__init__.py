"""dispatch/cli/interactive"""
