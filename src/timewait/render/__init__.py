"""Turning results into text, JSON and pictures. Pure functions of data; the CLI prints them."""
