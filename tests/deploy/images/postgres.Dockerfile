# Postgres from Debian packages, for the compose end-to-end test (no registry here for postgres:16).
# Reads the official image's variables: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB; PGPORT.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
RUN install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
COPY postgres-start.sh /usr/local/bin/postgres-start.sh
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
USER postgres
CMD ["/usr/local/bin/postgres-start.sh"]
