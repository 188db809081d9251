"""Test helpers: servers started as processes, layouts, PKI, Redis servers, conformance targets."""
