# Multi-stage build: a static binary in a distroless image, running as non-root.
# .dockerignore keeps .git, .env and key files out of the build context, so the
# build has no VCS information: pass the version in, e.g.
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=
ARG REVISION=
ARG BUILD_DATE=
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags="-s -w -X main.version=${VERSION} -X main.revision=${REVISION} -X main.buildDate=${BUILD_DATE}" \
    -o /out/cancel-worker ./cmd/cancel-worker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cancel-worker /usr/local/bin/cancel-worker
USER nonroot:nonroot
EXPOSE 9478
# No shell or curl in the image: the binary asks its own /readyz (HTTP_ADDR).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/cancel-worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cancel-worker"]
CMD ["run"]
