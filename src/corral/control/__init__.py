"""Reconcilers and services: where intent recorded by the API meets the outside world.

Uses the store, the event bus and the drivers; called by the API and background loops.
"""
