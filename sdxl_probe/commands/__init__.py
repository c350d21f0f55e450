"""Thin Typer commands over the pure cores. Heavy imports happen inside each command."""
