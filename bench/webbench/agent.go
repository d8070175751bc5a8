package webbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/hachat/hachat/bench/workers"
)

// agent is one logged-in agent: its push channel reader hands offers to
// its accept worker and records message deliveries.
type agent struct {
	id, token string
	offers    chan string
}

// agentCall sends a JSON body (nil: none) to the agent API with token and
// decodes a 200 answer into out.
func (b *bench) agentCall(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.inter+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := b.sendHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// loginAgents logs every agent in with its password, opens its push
// channel and makes it ready.
func (b *bench) loginAgents(ctx context.Context) error {
	creds := b.agentsC
	b.agents = make([]*agent, len(creds))
	// Logins verify an argon2id hash each: a few at a time.
	return workers.Range(ctx, 4, 0, len(creds), nil, func(ctx context.Context, i int) error {
		var out struct {
			Token string `json:"token"`
		}
		if err := b.agentCall(ctx, http.MethodPost, "/agent/v1/login", "", map[string]string{
			"agentId": creds[i].user, "password": creds[i].password}, &out); err != nil {
			return fmt.Errorf("login %s: %w", creds[i].user, err)
		}
		ag := &agent{id: creds[i].user, token: out.Token, offers: make(chan string, 1024)}
		b.agents[i] = ag
		body, err := openSSE(b.ctx, b.streamHTTP, b.inter+"/agent/v1/events", http.Header{"Authorization": {"Bearer " + ag.token}})
		if err != nil {
			return fmt.Errorf("agent %s: %w", ag.id, err)
		}
		b.wg.Add(2)
		go func() {
			defer b.wg.Done()
			b.agentPush(ag, body)
		}()
		go func() {
			defer b.wg.Done()
			b.acceptOffers(ag)
		}()
		if err := b.agentCall(ctx, http.MethodPost, "/agent/v1/ready", ag.token, nil, nil); err != nil {
			return fmt.Errorf("ready %s: %w", ag.id, err)
		}
		return nil
	})
}

// agentPush reads an agent's push channel until the bench closes.
func (b *bench) agentPush(ag *agent, body io.ReadCloser) {
	defer body.Close()
	stop := context.AfterFunc(b.ctx, func() { body.Close() })
	defer stop()
	var offer struct {
		ChatID string `json:"chatId"`
	}
	err := readSSE(body, func(ev sseEvent) {
		switch string(ev.Event) {
		case "offer": // one per chat: decoded
			offer.ChatID = ""
			if json.Unmarshal(ev.Data, &offer) == nil && offer.ChatID != "" {
				select {
				case ag.offers <- offer.ChatID:
				case <-b.ctx.Done():
				}
			}
		case "chat": // one per message: only the bench's clientMessageId is read
			if id, ok := benchMessageID(ev.Data); ok {
				if i, ok := b.tr.messageNumber(id); ok {
					b.tr.delivered(i, true, time.Now().UnixNano())
				}
			}
		}
	})
	if b.ctx.Err() == nil {
		fmt.Fprintf(b.o.Progress, "  agent %s push channel ended: %v\n", ag.id, err)
	}
}

// acceptOffers accepts every chat offered to ag.
func (b *bench) acceptOffers(ag *agent) {
	for {
		var chatID string
		select {
		case <-b.ctx.Done():
			return
		case chatID = <-ag.offers:
		}
		ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
		err := b.agentCall(ctx, http.MethodPost, "/agent/v1/offers/"+url.PathEscape(chatID)+"/accept", ag.token, nil, nil)
		cancel()
		if err != nil {
			if b.ctx.Err() == nil {
				fmt.Fprintf(b.o.Progress, "  agent %s: accept %s: %v\n", ag.id, chatID, err)
			}
			continue
		}
		b.accepted.Add(1)
	}
}
