package chatclient

import "google.golang.org/grpc/metadata"

// metadataMD keeps the stream method signatures short.
type metadataMD = metadata.MD
