"""Retriever kinds. Importing this package registers every built-in kind."""
from dispatch.context.retrievers.base import RETRIEVERS, RetrievalEnv, Retriever, build_retriever
from dispatch.context.retrievers.http import HttpRetriever, RetrievalServiceError
from dispatch.context.retrievers.workspace import WorkspaceRetriever

__all__ = ["RETRIEVERS", "RetrievalEnv", "Retriever", "build_retriever", "HttpRetriever",
           "RetrievalServiceError", "WorkspaceRetriever"]
