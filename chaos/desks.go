package chaos

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/hachat/hachat/pause"
	"github.com/hachat/hachat/workload"
)

// session is one chat of the workload. Its agent may change: an
// interaction instance that loses its state (kill -9) puts the chat back in
// the queue, and whichever agent it is offered to takes it again, as a
// person at the desktop would.
type session struct {
	chatID     string
	customer   *customer
	supervisor *desk

	mu        sync.Mutex
	agent     *desk
	monitored bool          // the supervisor has monitored it once
	taken     chan struct{} // closed when an agent first takes the chat
	ended     bool          // the customer has left
	// seen is the customer's transcript read just before leaving.
	seen    []workload.ViewEvent
	seenErr error
}

func newSession(c *customer, supervisor *desk) *session {
	return &session{chatID: c.chatID, customer: c, supervisor: supervisor, taken: make(chan struct{})}
}

func (s *session) current() *desk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agent
}

// take records that d accepted the chat; it reports whether the chat had
// been taken before (a re-acceptance).
func (s *session) take(d *desk) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	again := s.agent != nil
	if !again {
		close(s.taken)
	}
	s.agent = d
	return again
}

// end reads the customer's transcript (kept for the check) and has the
// customer leave the chat, trying for up to 20 s; once is enough.
func (s *session) end(ctx context.Context) {
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	if ended {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	seen, err := s.customer.View(ctx, 0)
	s.mu.Lock()
	s.ended, s.seen, s.seenErr = true, seen, err
	s.mu.Unlock()
	for ctx.Err() == nil {
		if err := s.customer.disconnect(ctx); err == nil {
			return
		}
		pause.For(ctx, 200*time.Millisecond)
	}
}

// customerViewer is the customer's view: the transcript read before
// leaving when the chat has ended, else the live one.
func (s *session) customerViewer() workload.Viewer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		return s.customer
	}
	return storedView{name: "customer", events: s.seen, err: s.seenErr}
}

type storedView struct {
	name   string
	events []workload.ViewEvent
	err    error
}

func (v storedView) Name() string { return v.name }

func (v storedView) View(context.Context, uint64) ([]workload.ViewEvent, error) {
	return v.events, v.err
}

// registry is the workload's chats, by id, which the desks take and
// monitor.
type registry struct {
	mu         sync.Mutex
	byID       map[string]*session
	reaccepted int // chats taken again after their agent lost them
	remonitors int // chats the supervisor had to monitor again
}

func (r *registry) add(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = map[string]*session{}
	}
	r.byID[s.chatID] = s
}

func (r *registry) get(id string) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

func (r *registry) all() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session, 0, len(r.byID))
	for _, s := range r.byID {
		out = append(out, s)
	}
	return out
}

type deskState struct {
	Agent struct {
		State string `json:"state"`
	} `json:"agent"`
	Chats []struct {
		ChatID string `json:"chatId"`
	} `json:"chats"`
	Offers []struct {
		ChatID string `json:"chatId"`
	} `json:"offers"`
}

// keepAgent keeps agent d at work until ctx ends: ready, and accepting
// every offer of a workload chat (the first time, or again after losing
// it).
func (r *registry) keepAgent(ctx context.Context, d *desk) {
	for {
		var st deskState
		if err := d.call(ctx, http.MethodGet, "/agent/v1/state", nil, &st); err == nil {
			if st.Agent.State != "ready" {
				_ = d.call(ctx, http.MethodPost, "/agent/v1/ready", nil, nil)
			}
			for _, o := range st.Offers {
				s := r.get(o.ChatID)
				if s == nil {
					continue
				}
				if err := d.call(ctx, http.MethodPost, "/agent/v1/offers/"+url.PathEscape(o.ChatID)+"/accept", nil, nil); err == nil && s.take(d) {
					r.mu.Lock()
					r.reaccepted++
					r.mu.Unlock()
				}
			}
		}
		if !pause.For(ctx, 150*time.Millisecond) {
			return
		}
	}
}

// keepSupervisor keeps supervisor d monitoring every workload chat until
// ctx ends (again after an interaction instance lost the monitoring).
func (r *registry) keepSupervisor(ctx context.Context, d *desk) {
	for {
		var st deskState
		if err := d.call(ctx, http.MethodGet, "/agent/v1/state", nil, &st); err == nil {
			have := map[string]bool{}
			for _, c := range st.Chats {
				have[c.ChatID] = true
			}
			for _, s := range r.all() {
				s.mu.Lock()
				ended := s.ended
				s.mu.Unlock()
				if have[s.chatID] || ended {
					continue
				}
				if err := d.call(ctx, http.MethodPost, "/agent/v1/chats/"+url.PathEscape(s.chatID)+"/monitor", nil, nil); err == nil {
					s.mu.Lock()
					again := s.monitored
					s.monitored = true
					s.mu.Unlock()
					if again {
						r.mu.Lock()
						r.remonitors++
						r.mu.Unlock()
					}
				}
			}
		}
		if !pause.For(ctx, 300*time.Millisecond) {
			return
		}
	}
}

// agentSide is the agent's part in one chat, whichever agent holds it now.
type agentSide struct{ s *session }

func (a agentSide) Name() string { return "agent" }

// Send sends as the chat's agent. "Not your chat" (403) and "no such chat"
// (404) are retried with the same client message id: the chat's agent lost
// it and takes it again (keepAgent).
func (a agentSide) Send(ctx context.Context, text, cmid string) (uint64, bool, error) {
	d := a.s.current()
	var out struct {
		Index uint64 `json:"index"`
	}
	err := d.call(ctx, http.MethodPost, "/agent/v1/chats/"+url.PathEscape(a.s.chatID)+"/send", map[string]string{"message": text, "clientMessageId": cmid}, &out)
	if err != nil {
		var ae *agentErr
		lostChat := errors.As(err, &ae) && (ae.status == http.StatusForbidden || ae.status == http.StatusNotFound)
		return 0, lostChat || retryableAgent(err), err
	}
	return out.Index, false, nil
}

// View is the push channel of the agent holding the chat now (accepting
// replays the whole transcript).
func (a agentSide) View(ctx context.Context, through uint64) ([]workload.ViewEvent, error) {
	return a.s.current().view(ctx, a.s.chatID, through)
}
