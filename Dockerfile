# Multi-stage build: a static binary in a distroless image, running as non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/cancel-worker ./cmd/cancel-worker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/cancel-worker /usr/local/bin/cancel-worker
USER nonroot:nonroot
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cancel-worker"]
CMD ["run"]
