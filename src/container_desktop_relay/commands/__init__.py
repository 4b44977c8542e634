"""Operator commands beside the two roles: doctor, status, service, docker-context, bench."""
