"""Thin Ray actors: each wraps one pipeline stage and owns one resource."""
