"""dispatch: a phase-controlled pipeline that runs a breakdown of work as parallel agent tasks on Celery."""

__version__ = "0.1.0"
