"""Everything Flowroute-specific: webhook parsing, the send API client, receipts, errors.

A second carrier would be a sibling package with the same four modules.
"""
