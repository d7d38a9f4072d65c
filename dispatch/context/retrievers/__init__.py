"""Retriever kinds. Importing this package registers every built-in kind."""
from .base import RETRIEVERS, RetrievalEnv, Retriever, build_retriever
from .http import HttpRetriever, RetrievalServiceError
from .workspace import WorkspaceRetriever

__all__ = ["RETRIEVERS", "RetrievalEnv", "Retriever", "build_retriever", "HttpRetriever",
           "RetrievalServiceError", "WorkspaceRetriever"]
