"""Compiler passes and pipelines."""
