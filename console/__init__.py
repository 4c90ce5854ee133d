"""The operator console: the history API (`/api/v1/...`) and the web pages over it.

Served by `smsbridge console` (alone) and `smsbridge run`, on `console.listen`, only when a
ledger and a `[console]` section are configured. See `console/app.py`.
"""
