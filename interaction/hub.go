package interaction

import (
	"encoding/json"
	"sync"
)

// sseMsg is one Server-Sent Event: its event name and JSON data.
type sseMsg struct {
	event string
	data  []byte
}

func newMsg(event string, v any) sseMsg {
	b, err := json.Marshal(v)
	if err != nil { // every payload is a plain struct: cannot happen
		b = []byte(`{"error":"unencodable event"}`)
	}
	return sseMsg{event: event, data: b}
}

// subBuffer is how many events one push connection may fall behind before
// it is dropped; the desktop then reconnects and gets the full state again.
const subBuffer = 1024

// subscriber is one open push connection of an agent.
type subscriber struct {
	ch   chan sseMsg
	once sync.Once
}

func (s *subscriber) close() { s.once.Do(func() { close(s.ch) }) }

// hub fans events out to the push connections of each agent. Publishing never
// blocks: a connection that falls subBuffer events behind is closed.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[*subscriber]bool // agent id → connections
}

func newHub() *hub { return &hub{subs: map[string]map[*subscriber]bool{}} }

// add registers a connection for agent, first queueing the initial messages.
func (h *hub) add(agent string, initial []sseMsg) *subscriber {
	s := &subscriber{ch: make(chan sseMsg, subBuffer+len(initial))}
	for _, m := range initial {
		s.ch <- m
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[agent] == nil {
		h.subs[agent] = map[*subscriber]bool{}
	}
	h.subs[agent][s] = true
	return s
}

// remove unregisters a connection.
func (h *hub) remove(agent string, s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[agent], s)
	if len(h.subs[agent]) == 0 {
		delete(h.subs, agent)
	}
	s.close()
}

// publish sends m to every connection of agent.
func (h *hub) publish(agent string, m sseMsg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sendLocked(agent, m)
}

// broadcast sends m to every connection of every agent.
func (h *hub) broadcast(m sseMsg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for agent := range h.subs {
		h.sendLocked(agent, m)
	}
}

// closeAgent ends every connection of agent (logout).
func (h *hub) closeAgent(agent string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[agent] {
		s.close()
	}
	delete(h.subs, agent)
}

// connections returns the number of open push connections.
func (h *hub) connections() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ss := range h.subs {
		n += len(ss)
	}
	return n
}

func (h *hub) sendLocked(agent string, m sseMsg) {
	for s := range h.subs[agent] {
		select {
		case s.ch <- m:
		default: // too slow: drop it, the desktop reconnects and resyncs
			delete(h.subs[agent], s)
			s.close()
		}
	}
}

// closeAll ends every push connection (an instance that stops leading: the
// desktops reconnect, through the edge, to the new leader).
func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for agent, ss := range h.subs {
		for s := range ss {
			s.close()
		}
		delete(h.subs, agent)
	}
}
