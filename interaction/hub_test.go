package interaction

import (
	"testing"
)

func TestHubDropsSlowSubscriber(t *testing.T) {
	h := newHub()
	slow := h.add("a", nil)
	fast := h.add("a", []sseMsg{{event: "state"}})
	other := h.add("b", nil)
	if m := <-fast.ch; m.event != "state" {
		t.Fatalf("initial message %q", m.event)
	}
	for i := 0; i < subBuffer+1; i++ {
		h.publish("a", sseMsg{event: "chat"})
		<-fast.ch // keeps up
	}
	n := 0
	for range slow.ch { // closed after subBuffer messages
		n++
	}
	if n != subBuffer {
		t.Errorf("slow subscriber got %d messages before being dropped, want %d", n, subBuffer)
	}
	if got := h.connections(); got != 2 {
		t.Errorf("connections %d, want 2 (fast and other)", got)
	}
	h.broadcast(sseMsg{event: "queue"})
	if m := <-other.ch; m.event != "queue" {
		t.Errorf("broadcast reached b as %q", m.event)
	}
	if m := <-fast.ch; m.event != "queue" {
		t.Errorf("broadcast reached a as %q", m.event)
	}
	h.closeAgent("a")
	if _, ok := <-fast.ch; ok {
		t.Error("closeAgent left a connection open")
	}
	h.remove("a", fast) // after closeAgent: harmless
}
