package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLogHandlerAddsTheRequestIDFromTheContext(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(LogHandler(LogHandler(slog.NewJSONHandler(&buf, nil))))
	ctx := context.WithValue(t.Context(), requestIDKey{}, "req-1")
	for _, l := range []*slog.Logger{log, log.With("k", "v"), log.WithGroup("g")} {
		buf.Reset()
		l.InfoContext(ctx, "hello")
		var rec map[string]any
		require.NoError(t, json.Unmarshal(buf.Bytes(), &rec))
		if g, ok := rec["g"].(map[string]any); ok {
			rec = g
		}
		require.Equal(t, "req-1", rec["request_id"], buf.String())
		require.Equal(t, 1, bytes.Count(buf.Bytes(), []byte("request_id")), "wrapping twice adds it once")
	}
	buf.Reset()
	log.InfoContext(t.Context(), "outside a request")
	require.NotContains(t, buf.String(), "request_id")
}
