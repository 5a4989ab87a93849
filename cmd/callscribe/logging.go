package main

import (
	"io"
	"log/slog"
	"os"
	"strings"
)

func parseLevel(level string) slog.Level {
	switch strings.ToLower(level) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// newLogger logs text to w, or JSON under systemd (JOURNAL_STREAM set).
func newLogger(w io.Writer, level string) *slog.Logger {
	l, _ := newLeveledLogger(w, level)
	return l
}

// newLeveledLogger is newLogger with a level that can change later (reload).
func newLeveledLogger(w io.Writer, level string) (*slog.Logger, *slog.LevelVar) {
	lv := &slog.LevelVar{}
	lv.Set(parseLevel(level))
	opts := &slog.HandlerOptions{Level: lv}
	if os.Getenv("JOURNAL_STREAM") != "" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv
}
