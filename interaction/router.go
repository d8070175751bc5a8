package interaction

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"
)

// Role is what a logged-in user of the agent desktop is.
type Role string

// The roles of the agent API.
const (
	// RoleAgent takes offered chats.
	RoleAgent Role = "agent"
	// RoleSupervisor takes no offers; it monitors or coaches live chats.
	RoleSupervisor Role = "supervisor"
)

// ChatInfo describes a chat session as WatchSessions announced it.
type ChatInfo struct {
	ID       string            `json:"chatId"`
	Service  string            `json:"service,omitempty"`
	Subject  string            `json:"subject,omitempty"`
	Customer string            `json:"customer,omitempty"`
	UserData map[string]string `json:"userData,omitempty"`
	Started  time.Time         `json:"startedAt"`
}

// ChatState is where a chat is in routing.
type ChatState string

// The routing states of a chat.
const (
	// ChatQueued waits in the queue for a ready agent.
	ChatQueued ChatState = "queued"
	// ChatOffered is offered to one agent until the offer times out.
	ChatOffered ChatState = "offered"
	// ChatAssigned is held by one agent.
	ChatAssigned ChatState = "assigned"
)

// Withdrawal reasons carried by NoticeWithdrawn.
const (
	ReasonTimeout  = "timeout"
	ReasonRejected = "rejected"
	ReasonNotReady = "notReady"
	ReasonEnded    = "ended"
	ReasonLogout   = "logout"
)

// NoticeKind says what a routing Notice tells.
type NoticeKind int

// The notices the Router emits.
const (
	// NoticeOffer: Chat is now offered to Agent until Deadline.
	NoticeOffer NoticeKind = iota + 1
	// NoticeWithdrawn: the offer of Chat to Agent is gone, for Reason.
	NoticeWithdrawn
	// NoticeQueue: the queue length changed to Queue.
	NoticeQueue
)

// Notice is one routing decision that the Server publishes to agents.
type Notice struct {
	Kind     NoticeKind
	Agent    string
	Chat     ChatInfo
	Deadline time.Time
	Reason   string
	Queue    int
}

// AgentView is a copy of one agent's routing state.
type AgentView struct {
	ID        string    `json:"agentId"`
	Nickname  string    `json:"nickname"`
	Role      Role      `json:"role"`
	Ready     bool      `json:"ready"`
	IdleSince time.Time `json:"idleSince"`
	Chats     []string  `json:"chats"`
	Offer     string    `json:"offer,omitempty"`
}

// ChatView is a copy of one chat's routing state.
type ChatView struct {
	Info     ChatInfo  `json:"chat"`
	State    ChatState `json:"state"`
	Agent    string    `json:"agentId,omitempty"`
	Deadline time.Time `json:"offerDeadline,omitzero"`
	Busy     bool      `json:"busy,omitempty"`
}

type routedChat struct {
	info     ChatInfo
	seq      uint64 // arrival order: the queue is sorted by it
	state    ChatState
	agent    string    // offered-to or assigned agent
	deadline time.Time // offer deadline
	busy     bool      // join, transfer, leave or close in flight
	transfer string    // target agent of a transfer in flight
	declined map[string]bool
}

type routedAgent struct {
	id, nickname string
	role         Role
	ready        bool
	idleSince    time.Time
	chats        map[string]bool
	offer        string // chat id of the pending offer, "" if none
	reserved     int    // transfers in flight towards this agent
}

func (a *routedAgent) load() int {
	n := len(a.chats) + a.reserved
	if a.offer != "" {
		n++
	}
	return n
}

// Router is the pure queue and offer logic of the Interaction Server: who is
// logged in, ready and how loaded, which chats wait, which are offered to whom
// and until when. It does no I/O and reads no clock: every operation takes
// now, and returns the Notices the caller publishes. It is not safe for
// concurrent use; the Server guards it with its mutex.
//
// Routing rules: chats wait in arrival order (a chat that comes back from an
// offer keeps its place); the oldest waiting chat is offered to the eligible
// agent idle longest. An agent is eligible when logged in with RoleAgent,
// ready, without a pending offer, and below max chats (pending offer and
// incoming transfers count). Idle since is the last time the agent went
// ready, accepted or received a chat, or lost one. An agent who rejected a
// chat or let its offer time out is offered that chat again only when every
// other ready agent with room has declined it too; until then the chat waits
// (later chats may pass it).
type Router struct {
	maxChats     int
	offerTimeout time.Duration
	agents       map[string]*routedAgent
	chats        map[string]*routedChat
	queue        []*routedChat // sorted by seq
	seq          uint64
	lastQueue    int
}

// NewRouter returns an empty router.
func NewRouter(maxChats int, offerTimeout time.Duration) *Router {
	return &Router{
		maxChats:     maxChats,
		offerTimeout: offerTimeout,
		agents:       map[string]*routedAgent{},
		chats:        map[string]*routedChat{},
	}
}

// Login adds the agent, not ready, or updates the nickname of an agent who is
// already logged in (a second desktop tab). A login under another role than
// the existing one fails with ErrRoleMismatch.
func (r *Router) Login(id, nickname string, role Role, now time.Time) error {
	if a, ok := r.agents[id]; ok {
		if a.role != role {
			return ErrRoleMismatch
		}
		a.nickname = nickname
		return nil
	}
	r.agents[id] = &routedAgent{id: id, nickname: nickname, role: role, idleSince: now, chats: map[string]bool{}}
	return nil
}

// Logout removes the agent; a pending offer goes back to the queue. It fails
// with ErrHoldsChats while the agent holds chats.
func (r *Router) Logout(id string, now time.Time) ([]Notice, error) {
	a, ok := r.agents[id]
	if !ok {
		return nil, ErrUnknownAgent
	}
	if len(a.chats) > 0 || a.reserved > 0 {
		return nil, ErrHoldsChats
	}
	var ns []Notice
	ns = r.withdraw(a, ReasonLogout, ns)
	delete(r.agents, id)
	return r.dispatch(now, ns), nil
}

// SetReady makes the agent ready (eligible for offers) or not ready; going
// not ready withdraws a pending offer. Supervisors fail with ErrNotRoutable.
func (r *Router) SetReady(id string, ready bool, now time.Time) ([]Notice, error) {
	a, ok := r.agents[id]
	if !ok {
		return nil, ErrUnknownAgent
	}
	if a.role != RoleAgent {
		return nil, ErrNotRoutable
	}
	var ns []Notice
	if ready && !a.ready {
		a.idleSince = now
	}
	if !ready {
		ns = r.withdraw(a, ReasonNotReady, ns)
	}
	a.ready = ready
	return r.dispatch(now, ns), nil
}

// AddChat queues a new chat. A chat id the router already knows is ignored
// (added false): WatchSessions repeats every live session when it resumes.
func (r *Router) AddChat(info ChatInfo, now time.Time) (added bool, ns []Notice) {
	if _, ok := r.chats[info.ID]; ok {
		return false, nil
	}
	r.seq++
	c := &routedChat{info: info, seq: r.seq, state: ChatQueued, declined: map[string]bool{}}
	r.chats[info.ID] = c
	r.enqueue(c)
	return true, r.dispatch(now, nil)
}

// EndChat forgets a chat whose session ended: it leaves the queue, its offer
// is withdrawn, its agent loses it. It returns the chat as it was.
func (r *Router) EndChat(id string, now time.Time) (ChatView, []Notice, bool) {
	c, ok := r.chats[id]
	if !ok {
		return ChatView{}, nil, false
	}
	was := c.view()
	var ns []Notice
	switch c.state {
	case ChatQueued:
		r.dequeue(c)
	case ChatOffered:
		a := r.agents[c.agent]
		a.offer = ""
		ns = append(ns, Notice{Kind: NoticeWithdrawn, Agent: a.id, Chat: c.info, Reason: ReasonEnded})
	case ChatAssigned:
		if a, ok := r.agents[c.agent]; ok {
			delete(a.chats, id)
			a.idleSince = now
		}
	}
	if c.transfer != "" {
		if t, ok := r.agents[c.transfer]; ok {
			t.reserved--
		}
	}
	delete(r.chats, id)
	return was, r.dispatch(now, ns), true
}

// Accept assigns the chat offered to agent. The chat stays busy until the
// caller reports the core Join with JoinDone.
func (r *Router) Accept(agent, chat string, now time.Time) ([]Notice, error) {
	a, ok := r.agents[agent]
	if !ok {
		return nil, ErrUnknownAgent
	}
	c, ok := r.chats[chat]
	if !ok || c.state != ChatOffered || c.agent != agent {
		return nil, ErrNoOffer
	}
	a.offer = ""
	a.chats[chat] = true
	a.idleSince = now
	c.state, c.busy, c.deadline = ChatAssigned, true, time.Time{}
	return r.dispatch(now, nil), nil
}

// JoinDone ends the busy state Accept began. When the join failed the chat
// goes back to the queue (keeping its place). It fails with ErrUnknownChat if
// the chat ended meanwhile, and ErrNotYourChat if it is no longer agent's.
func (r *Router) JoinDone(agent, chat string, ok bool, now time.Time) ([]Notice, error) {
	c, found := r.chats[chat]
	if !found {
		return nil, ErrUnknownChat
	}
	if c.state != ChatAssigned || c.agent != agent {
		return nil, ErrNotYourChat
	}
	c.busy = false
	if ok {
		return nil, nil
	}
	if a, found := r.agents[agent]; found {
		delete(a.chats, chat)
	}
	c.state, c.agent = ChatQueued, ""
	r.enqueue(c)
	return r.dispatch(now, nil), nil
}

// Reject hands the chat offered to agent back to the queue; the next agent
// gets it.
func (r *Router) Reject(agent, chat string, now time.Time) ([]Notice, error) {
	a, ok := r.agents[agent]
	if !ok {
		return nil, ErrUnknownAgent
	}
	c, ok := r.chats[chat]
	if !ok || c.state != ChatOffered || c.agent != agent {
		return nil, ErrNoOffer
	}
	ns := r.withdraw(a, ReasonRejected, nil)
	return r.dispatch(now, ns), nil
}

// Tick withdraws every offer whose deadline has passed and offers those chats
// to the next agents.
func (r *Router) Tick(now time.Time) []Notice {
	var ns []Notice
	for _, id := range slices.Sorted(maps.Keys(r.agents)) {
		a := r.agents[id]
		if a.offer == "" {
			continue
		}
		if c := r.chats[a.offer]; !c.deadline.After(now) {
			ns = r.withdraw(a, ReasonTimeout, ns)
		}
	}
	return r.dispatch(now, ns)
}

// NextDeadline returns the earliest offer deadline, if any offer is pending.
func (r *Router) NextDeadline() (time.Time, bool) {
	var min time.Time
	for _, c := range r.chats {
		if c.state == ChatOffered && (min.IsZero() || c.deadline.Before(min)) {
			min = c.deadline
		}
	}
	return min, !min.IsZero()
}

// Begin marks the agent's chat busy for a leave or close; End finishes it.
func (r *Router) Begin(agent, chat string) error {
	c, err := r.owned(agent, chat)
	if err != nil {
		return err
	}
	c.busy = true
	return nil
}

// End clears the busy mark of Begin; with release the agent gives the chat
// up, and with requeue it goes back to the queue instead of being forgotten
// (the agent counts as having declined it).
func (r *Router) End(agent, chat string, release, requeue bool, now time.Time) []Notice {
	c, ok := r.chats[chat]
	if !ok || c.state != ChatAssigned || c.agent != agent {
		return nil
	}
	c.busy = false
	if !release {
		return nil
	}
	if a, ok := r.agents[agent]; ok {
		delete(a.chats, chat)
		a.idleSince = now
	}
	if requeue {
		c.declined[agent] = true
		c.state, c.agent = ChatQueued, ""
		r.enqueue(c)
	} else {
		delete(r.chats, chat)
	}
	return r.dispatch(now, nil)
}

// BeginTransfer reserves room for the chat at agent to and marks the chat
// busy; FinishTransfer moves it (or not) once the core join is done. The
// target must be a logged-in agent (ready or not) below max chats.
func (r *Router) BeginTransfer(from, chat, to string) error {
	c, err := r.owned(from, chat)
	if err != nil {
		return err
	}
	if to == from {
		return fmt.Errorf("%w: cannot transfer a chat to its own agent", ErrConflict)
	}
	t, ok := r.agents[to]
	if !ok {
		return fmt.Errorf("%w: transfer target %q", ErrUnknownAgent, to)
	}
	if t.role != RoleAgent {
		return fmt.Errorf("%w: transfer target %q is a supervisor", ErrConflict, to)
	}
	if t.load() >= r.maxChats {
		return fmt.Errorf("transfer target %q: %w", to, ErrAtCapacity)
	}
	t.reserved++
	c.busy, c.transfer = true, to
	return nil
}

// FinishTransfer completes (ok) or abandons a transfer begun by BeginTransfer.
func (r *Router) FinishTransfer(chat string, ok bool, now time.Time) []Notice {
	c, found := r.chats[chat]
	if !found || c.transfer == "" {
		return nil
	}
	to := r.agents[c.transfer]
	to.reserved--
	c.busy, c.transfer = false, ""
	if !ok {
		return nil
	}
	if from, found := r.agents[c.agent]; found {
		delete(from.chats, chat)
		from.idleSince = now
	}
	to.chats[chat] = true
	to.idleSince = now
	c.agent = to.id
	return r.dispatch(now, nil)
}

// Agent returns a copy of the agent's state.
func (r *Router) Agent(id string) (AgentView, bool) {
	a, ok := r.agents[id]
	if !ok {
		return AgentView{}, false
	}
	return AgentView{ID: a.id, Nickname: a.nickname, Role: a.role, Ready: a.ready, IdleSince: a.idleSince,
		Chats: slices.Sorted(maps.Keys(a.chats)), Offer: a.offer}, true
}

// Agents returns every logged-in agent, sorted by id.
func (r *Router) Agents() []AgentView {
	out := make([]AgentView, 0, len(r.agents))
	for _, id := range slices.Sorted(maps.Keys(r.agents)) {
		v, _ := r.Agent(id)
		out = append(out, v)
	}
	return out
}

// Chat returns a copy of the chat's routing state.
func (r *Router) Chat(id string) (ChatView, bool) {
	c, ok := r.chats[id]
	if !ok {
		return ChatView{}, false
	}
	return c.view(), true
}

// Chats returns every live chat in arrival order.
func (r *Router) Chats() []ChatView {
	cs := slices.Collect(maps.Values(r.chats))
	sort.Slice(cs, func(i, j int) bool { return cs[i].seq < cs[j].seq })
	out := make([]ChatView, len(cs))
	for i, c := range cs {
		out[i] = c.view()
	}
	return out
}

// QueueLen returns how many chats wait for an offer.
func (r *Router) QueueLen() int { return len(r.queue) }

// Queue returns the ids of the waiting chats, oldest first.
func (r *Router) Queue() []string {
	out := make([]string, len(r.queue))
	for i, c := range r.queue {
		out[i] = c.info.ID
	}
	return out
}

func (c *routedChat) view() ChatView {
	return ChatView{Info: c.info, State: c.state, Agent: c.agent, Deadline: c.deadline, Busy: c.busy}
}

func (r *Router) owned(agent, chat string) (*routedChat, error) {
	if _, ok := r.agents[agent]; !ok {
		return nil, ErrUnknownAgent
	}
	c, ok := r.chats[chat]
	if !ok {
		return nil, ErrUnknownChat
	}
	if c.state != ChatAssigned || c.agent != agent {
		return nil, ErrNotYourChat
	}
	if c.busy {
		return nil, ErrBusy
	}
	return c, nil
}

// withdraw takes back the agent's pending offer, if any, and requeues the chat.
func (r *Router) withdraw(a *routedAgent, reason string, ns []Notice) []Notice {
	if a.offer == "" {
		return ns
	}
	c := r.chats[a.offer]
	a.offer = ""
	if reason == ReasonTimeout || reason == ReasonRejected {
		c.declined[a.id] = true
	}
	c.state, c.agent, c.deadline = ChatQueued, "", time.Time{}
	r.enqueue(c)
	return append(ns, Notice{Kind: NoticeWithdrawn, Agent: a.id, Chat: c.info, Reason: reason})
}

func (r *Router) enqueue(c *routedChat) {
	i := sort.Search(len(r.queue), func(i int) bool { return r.queue[i].seq > c.seq })
	r.queue = slices.Insert(r.queue, i, c)
}

func (r *Router) dequeue(c *routedChat) {
	if i := slices.Index(r.queue, c); i >= 0 {
		r.queue = slices.Delete(r.queue, i, i+1)
	}
}

// dispatch offers waiting chats, oldest first, to eligible agents, and adds a
// queue notice when the queue length changed since the last one.
func (r *Router) dispatch(now time.Time, ns []Notice) []Notice {
	for i := 0; i < len(r.queue); {
		if !r.anyFree() {
			break
		}
		c := r.queue[i]
		a := r.pick(c)
		if a == nil {
			i++ // only agents who declined c are free: c waits, later chats may go
			continue
		}
		r.queue = slices.Delete(r.queue, i, i+1)
		c.state, c.agent, c.deadline = ChatOffered, a.id, now.Add(r.offerTimeout)
		a.offer = c.info.ID
		ns = append(ns, Notice{Kind: NoticeOffer, Agent: a.id, Chat: c.info, Deadline: c.deadline})
	}
	if n := len(r.queue); n != r.lastQueue {
		r.lastQueue = n
		ns = append(ns, Notice{Kind: NoticeQueue, Queue: n})
	}
	return ns
}

// routable reports whether a takes offers and has room, ignoring a pending offer.
func (r *Router) routable(a *routedAgent) bool {
	return a.role == RoleAgent && a.ready && len(a.chats)+a.reserved < r.maxChats
}

// free reports whether a can be offered a chat now.
func (r *Router) free(a *routedAgent) bool {
	return r.routable(a) && a.offer == "" && a.load() < r.maxChats
}

func (r *Router) anyFree() bool {
	for _, a := range r.agents {
		if r.free(a) {
			return true
		}
	}
	return false
}

// pick returns the free agent idle longest for c. Agents who declined c are
// passed over while any routable agent has not declined it (that agent may
// be busy with another offer right now: c waits for it); nil when nobody fits.
func (r *Router) pick(c *routedChat) *routedAgent {
	skipDecliners := false
	for _, a := range r.agents {
		if r.routable(a) && !c.declined[a.id] {
			skipDecliners = true
			break
		}
	}
	var best *routedAgent
	for _, a := range r.agents {
		if !r.free(a) || skipDecliners && c.declined[a.id] {
			continue
		}
		if best == nil || a.idleSince.Before(best.idleSince) ||
			a.idleSince.Equal(best.idleSince) && a.id < best.id {
			best = a
		}
	}
	return best
}
