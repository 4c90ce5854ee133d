FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY smsbridge ./smsbridge
COPY gateway ./gateway
COPY workers ./workers
COPY schemas ./schemas
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 smsbridge \
 && mkdir -p /var/lib/smsbridge/media && chown -R smsbridge /var/lib/smsbridge
USER smsbridge
ENTRYPOINT ["smsbridge", "--config", "/etc/smsbridge/smsbridge.toml"]
CMD ["run"]
