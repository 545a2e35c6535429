# One image for every role of the production topology (docker-compose.yml).
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /var/lib/fleetpulse fleetpulse \
    && install -d -o fleetpulse -m 0700 /certs  # the gRPC port's CA and key (docker-compose.yml)
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleetpulse fleetpulse
COPY proto proto
COPY agent agent
COPY ingest ingest
COPY api api
COPY bench bench
RUN pip install --no-cache-dir '.[server,agent]' && rm -rf /src

USER fleetpulse
WORKDIR /var/lib/fleetpulse
ENTRYPOINT ["fleetpulse"]
CMD ["--help"]
