FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# Exact versions and hashes from the lock file, then the project itself without resolving again.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY smsbridge ./smsbridge
COPY gateway ./gateway
COPY workers ./workers
COPY schemas ./schemas
COPY console ./console
RUN pip install --no-cache-dir --no-deps . \
 && useradd --system --uid 10001 smsbridge \
 && mkdir -p /var/lib/smsbridge/media && chown -R smsbridge /var/lib/smsbridge
USER smsbridge
ENTRYPOINT ["smsbridge", "--config", "/etc/smsbridge/smsbridge.toml"]
CMD ["run"]
