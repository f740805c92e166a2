"""Runners: one per kind of model or artifact."""
