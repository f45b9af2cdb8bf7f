"""The HTTP API (DESIGN.md §4): routes, error mapping, metrics and the OpenAPI document."""
