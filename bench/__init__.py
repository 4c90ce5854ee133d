"""smsbridge benchmarks (issue 4): ``python -m bench [--quick] [--only NAME]``.

Every component runs as its own process against a fresh RabbitMQ vhost; results are Markdown
tables printed and written to ``bench/results/latest.md``. See ``bench/README.md``.
"""
