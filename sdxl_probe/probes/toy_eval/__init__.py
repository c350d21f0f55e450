"""Toy-model evaluation: the toy world's judge scores generations; attention against object masks."""
