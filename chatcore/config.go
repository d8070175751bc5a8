package chatcore

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/hachat/hachat/chatcore/role"
	"github.com/hachat/hachat/membership"
	"github.com/hachat/hachat/pairs"
)

// Transcript auto-save modes (Genesys option transcript-auto-save).
const (
	// AutoSaveAtEnd saves the transcript once, when the session ends.
	AutoSaveAtEnd = 0
	// AutoSaveEveryMessage saves after every message (and every other
	// event except typing and save notices, which ride along with the next save).
	AutoSaveEveryMessage = 1
	// AutoSaveWithNotices is AutoSaveEveryMessage plus TRANSCRIPT_SAVED and
	// TRANSCRIPT_SAVE_FAILED events appended to the log, so participants see them.
	AutoSaveWithNotices = 2
)

// Values of transcript-save-on-error.
const (
	// SaveOnErrorClose closes the session without a final save when UCS
	// answers a save with a non-recoverable error.
	SaveOnErrorClose = "close"
	// SaveOnErrorContinue keeps the session open; later events retry the save.
	SaveOnErrorContinue = "continue"
)

// Values of session-restoration-mode.
const (
	// RestorationSimple restores every session after a failover.
	RestorationSimple = "simple"
	// RestorationNone ends every session after a failover (reason "failover").
	RestorationNone = "none"
)

// Roles a core can hold.
const (
	// RolePrimary serves clients and commits events.
	RolePrimary = role.Primary
	// RoleBackup replicates the primary and answers clients UNAVAILABLE.
	RoleBackup = role.Backup
)

// Config is the configuration of one chat core. The yaml keys equal the flag
// names; options that exist in Genesys Chat Server keep their Genesys names.
type Config struct {
	// Name identifies this core in logs, Status and the epoch holder (default "core").
	Name string `yaml:"name"`
	// GRPC is the listen address of the Chat and health gRPC services (default 127.0.0.1:7101).
	GRPC string `yaml:"grpc"`
	// HTTP is the listen address of /metrics, /healthz and /status (default 127.0.0.1:7102).
	HTTP string `yaml:"http"`
	// GRPCAdvertise, when set, is the gRPC address (IP:port) this core
	// announces in its gossip meta instead of the bound one: what the control
	// plane publishes to the sidecars as the endpoint and what the other core
	// dials. Needed when GRPC binds 0.0.0.0 (Kubernetes: the pod IP).
	// Default empty: the bound address.
	GRPCAdvertise string `yaml:"grpc-advertise"`
	// HTTPAdvertise, when set, is the HTTP address (IP:port) announced in the
	// gossip meta instead of the bound one. Default empty: the bound address.
	HTTPAdvertise string `yaml:"http-advertise"`
	// Role is the role the core starts with: primary or backup (default primary).
	// At run time the primary is whoever holds the newest epoch.
	Role string `yaml:"role"`
	// Cluster names the primary/backup pair; it is the service whose epoch is
	// claimed at UCS and the service of every transcript save (default "hachat").
	Cluster string `yaml:"cluster"`
	// Pair names the primary/backup pair this core belongs to when a
	// cluster runs several (package pairs: 1-16 of a-z, 0-9). Empty (the
	// default) is pair "1". The pair has its own epoch: its epoch service
	// is pairs.Service(Cluster, Pair), Cluster itself for pair 1, so one
	// pair's claim never fences another. The core gossips it in its meta,
	// reports it in /status, takes as its peer only a core of the same
	// pair, and mints chat ids that name it (pairs.ChatID).
	Pair string `yaml:"pair"`
	// ServiceToken must be presented by Join and WatchSessions (the Interaction
	// Server's token). Empty (default) accepts any token; set it in production.
	ServiceToken string `yaml:"service-token"`
	// AdminToken must be presented by Switchover. Empty (default) refuses every switchover.
	AdminToken string `yaml:"admin-token"`

	// MaxMessageSize is the largest text of one Send in bytes; attrs count
	// against the same limit (default 4096).
	MaxMessageSize int `yaml:"max-message-size"`
	// MaxSessions is the number of live sessions a core accepts (default 20000).
	MaxSessions int `yaml:"max-sessions"`
	// SendRate is the sustained Sends per second per participant (token
	// bucket refill rate, default 10).
	SendRate float64 `yaml:"send-rate"`
	// SendBurst is the token bucket size per participant (default 20).
	SendBurst int `yaml:"send-burst"`
	// FlexDisconnectTimeout disconnects a customer with no Send, Events or
	// Subscribe call and no open Subscribe stream for this long (Genesys
	// flex-disconnect-timeout; default 60s). Its leaving ends the session.
	FlexDisconnectTimeout time.Duration `yaml:"flex-disconnect-timeout"`
	// EndedSessionLinger keeps an ended session readable this long after its
	// final save so clients fetch the last events (default 30s).
	EndedSessionLinger time.Duration `yaml:"ended-session-linger"`
	// SubscriberBuffer is the per-subscriber event buffer; a subscriber that
	// falls this far behind is dropped from fan-out and catches up from the
	// log, so it never slows anyone else (default 256).
	SubscriberBuffer int `yaml:"subscriber-buffer"`

	// TranscriptAutoSave is 0 (save at session end), 1 (save after every
	// message) or 2 (as 1, plus save / save-fail notices in the log). Genesys
	// default 0; the HA recommendation is 1.
	TranscriptAutoSave int `yaml:"transcript-auto-save"`
	// TranscriptResendAttempts is how many times a failed save is resent
	// before it is given up until the next trigger (default 3).
	TranscriptResendAttempts int `yaml:"transcript-resend-attempts"`
	// TranscriptResendDelay is the wait between resend attempts (default 1s).
	TranscriptResendDelay time.Duration `yaml:"transcript-resend-delay"`
	// TranscriptSaveOnError is close or continue (default continue): what a
	// non-recoverable UCS error does to the session.
	TranscriptSaveOnError string `yaml:"transcript-save-on-error"`
	// TranscriptSaveNotices lists the notice kinds saved into the transcript:
	// "all", "none", or a comma list of typing, push-url, custom, save,
	// disconnect (default "push-url,custom,disconnect"). Messages, joins,
	// leaves, session start and end are always saved.
	TranscriptSaveNotices string `yaml:"transcript-save-notices"`
	// TranscriptSaveTimeout bounds one save call to UCS (default 5s).
	TranscriptSaveTimeout time.Duration `yaml:"transcript-save-timeout"`
	// TranscriptSaveWorkers is the number of concurrent savers (default 8).
	TranscriptSaveWorkers int `yaml:"transcript-save-workers"`
	// TranscriptSaveLinger paces batched saves (a UCS that takes batches):
	// a batch starts no sooner than this after the one before, so the
	// sessions dirtied meanwhile share one commit and a session's messages
	// one save; under load UCS then lags the cores by up to the dirty
	// sessions over 256 a linger. A save after an idle period starts at
	// once. Default 10ms; 0 turns pacing off.
	TranscriptSaveLinger time.Duration `yaml:"transcript-save-linger"`
	// TranscriptBreakerFailures is the number of consecutive failed saves that
	// opens the UCS circuit breaker (default 5).
	TranscriptBreakerFailures int `yaml:"transcript-breaker-failures"`
	// TranscriptBreakerTimeout is how long the breaker stays open before it
	// lets one probe through (default 5s).
	TranscriptBreakerTimeout time.Duration `yaml:"transcript-breaker-timeout"`
	// SessionRestorationMode is simple (restore sessions after a failover) or
	// none (end them with reason "failover"). Default simple.
	SessionRestorationMode string `yaml:"session-restoration-mode"`

	// Peer is the gRPC address of the other core of the pair. Empty (default)
	// runs a standalone core: no replication and no second copy before an ack.
	// With a peer, the backup dials the primary's Replication service there.
	Peer string `yaml:"peer"`
	// Witness is the HTTP address of a membership witness (or the xds control
	// plane) that the backup asks "can you reach the primary?" before it
	// promotes. Empty (default): the backup's own probe and the membership
	// view decide.
	Witness string `yaml:"witness"`
	// ReplicationTimeout is how long the primary waits for the backup's ack
	// before it gives the backup up and takes the second copy to UCS; the
	// backup treats a primary silent this long (no event, no heartbeat) as
	// suspect (default 500ms).
	ReplicationTimeout time.Duration `yaml:"replication-timeout"`
	// ProbeTimeout bounds the backup's direct TCP probe of the primary
	// (default 100ms). A refused dial is proof of death at once.
	ProbeTimeout time.Duration `yaml:"probe-timeout"`
	// EpochLease is the primary's lease on its epoch (default 1s): the
	// primary renews it at UCS four times per lease, and a backup whose
	// evidence of the primary's death is not certain (no refused connection
	// confirmed by the witness) may claim the next epoch only once the
	// primary has not renewed for this long. A healthy primary is thereby
	// never deposed by a backup that was merely cut off.
	EpochLease time.Duration `yaml:"epoch-lease"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Name:                      "core",
		GRPC:                      "127.0.0.1:7101",
		HTTP:                      "127.0.0.1:7102",
		Role:                      RolePrimary,
		Cluster:                   "hachat",
		MaxMessageSize:            4096,
		MaxSessions:               20000,
		SendRate:                  10,
		SendBurst:                 20,
		FlexDisconnectTimeout:     60 * time.Second,
		EndedSessionLinger:        30 * time.Second,
		SubscriberBuffer:          256,
		TranscriptAutoSave:        AutoSaveAtEnd,
		TranscriptResendAttempts:  3,
		TranscriptResendDelay:     time.Second,
		TranscriptSaveOnError:     SaveOnErrorContinue,
		TranscriptSaveNotices:     "push-url,custom,disconnect",
		TranscriptSaveTimeout:     5 * time.Second,
		TranscriptSaveWorkers:     8,
		TranscriptSaveLinger:      10 * time.Millisecond,
		TranscriptBreakerFailures: 5,
		TranscriptBreakerTimeout:  5 * time.Second,
		SessionRestorationMode:    RestorationSimple,
		ReplicationTimeout:        500 * time.Millisecond,
		ProbeTimeout:              100 * time.Millisecond,
		EpochLease:                time.Second,
	}
}

// RegisterFlags binds every field to a flag of the same name as its yaml key.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Name, "name", c.Name, "name of this core (logs, status, epoch holder)")
	fs.StringVar(&c.GRPC, "grpc", c.GRPC, "gRPC listen address (Chat, health)")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "HTTP listen address (/metrics, /healthz, /status)")
	fs.StringVar(&c.GRPCAdvertise, "grpc-advertise", c.GRPCAdvertise, "gRPC address IP:port announced to the cluster (sidecars' endpoint, the other core); default: the bound --grpc address")
	fs.StringVar(&c.HTTPAdvertise, "http-advertise", c.HTTPAdvertise, "HTTP address IP:port announced to the cluster; default: the bound --http address")
	fs.StringVar(&c.Role, "role", c.Role, "starting role: primary or backup")
	fs.StringVar(&c.Cluster, "cluster", c.Cluster, "name of the primary/backup pair (epoch service at UCS)")
	fs.StringVar(&c.Pair, "pair", c.Pair, "pair this core belongs to when the cluster runs several (a-z, 0-9; empty: pair 1)")
	fs.StringVar(&c.ServiceToken, "service-token", c.ServiceToken, "token Join and WatchSessions must carry (empty: any)")
	fs.StringVar(&c.AdminToken, "admin-token", c.AdminToken, "token Switchover must carry (empty: switchover refused)")
	fs.IntVar(&c.MaxMessageSize, "max-message-size", c.MaxMessageSize, "largest message text in bytes")
	fs.IntVar(&c.MaxSessions, "max-sessions", c.MaxSessions, "live sessions this core accepts")
	fs.Float64Var(&c.SendRate, "send-rate", c.SendRate, "sends per second per participant (sustained)")
	fs.IntVar(&c.SendBurst, "send-burst", c.SendBurst, "send burst per participant")
	durationVar(fs, &c.FlexDisconnectTimeout, "flex-disconnect-timeout", c.FlexDisconnectTimeout, "disconnect a customer idle this long")
	durationVar(fs, &c.EndedSessionLinger, "ended-session-linger", c.EndedSessionLinger, "keep ended sessions readable this long")
	fs.IntVar(&c.SubscriberBuffer, "subscriber-buffer", c.SubscriberBuffer, "events buffered per subscriber before it is dropped to catch-up")
	fs.IntVar(&c.TranscriptAutoSave, "transcript-auto-save", c.TranscriptAutoSave, "0 save at end, 1 after every message, 2 as 1 with notices")
	fs.IntVar(&c.TranscriptResendAttempts, "transcript-resend-attempts", c.TranscriptResendAttempts, "resends of a failed transcript save")
	durationVar(fs, &c.TranscriptResendDelay, "transcript-resend-delay", c.TranscriptResendDelay, "wait between transcript resends")
	fs.StringVar(&c.TranscriptSaveOnError, "transcript-save-on-error", c.TranscriptSaveOnError, "close or continue on a non-recoverable UCS error")
	fs.StringVar(&c.TranscriptSaveNotices, "transcript-save-notices", c.TranscriptSaveNotices, "notices saved in the transcript: all, none or list of typing,push-url,custom,save,disconnect")
	durationVar(fs, &c.TranscriptSaveTimeout, "transcript-save-timeout", c.TranscriptSaveTimeout, "timeout of one transcript save call")
	fs.IntVar(&c.TranscriptSaveWorkers, "transcript-save-workers", c.TranscriptSaveWorkers, "concurrent transcript savers")
	durationVar(fs, &c.TranscriptSaveLinger, "transcript-save-linger", c.TranscriptSaveLinger, "start a batched transcript save no sooner than this after the one before (sessions dirtied meanwhile share one UCS commit); 0: off")
	fs.IntVar(&c.TranscriptBreakerFailures, "transcript-breaker-failures", c.TranscriptBreakerFailures, "consecutive save failures that open the UCS breaker")
	durationVar(fs, &c.TranscriptBreakerTimeout, "transcript-breaker-timeout", c.TranscriptBreakerTimeout, "time the UCS breaker stays open before a probe")
	fs.StringVar(&c.SessionRestorationMode, "session-restoration-mode", c.SessionRestorationMode, "simple or none")
	fs.StringVar(&c.Peer, "peer", c.Peer, "gRPC address of the other core of the pair (empty: standalone)")
	fs.StringVar(&c.Witness, "witness", c.Witness, "HTTP address of the membership witness asked before a promotion")
	durationVar(fs, &c.ReplicationTimeout, "replication-timeout", c.ReplicationTimeout, "backup ack timeout; primary silence that makes the backup suspicious")
	durationVar(fs, &c.ProbeTimeout, "probe-timeout", c.ProbeTimeout, "timeout of the backup's direct probe of the primary")
	durationVar(fs, &c.EpochLease, "epoch-lease", c.EpochLease, "the primary's lease on its epoch at UCS: an uncertain failover waits until it lapsed")
}

// Validate reports the first bad field.
func (c *Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("name is empty"))
	}
	if c.Role != RolePrimary && c.Role != RoleBackup {
		errs = append(errs, fmt.Errorf("role %q: want primary or backup", c.Role))
	}
	if c.Cluster == "" {
		errs = append(errs, errors.New("cluster is empty"))
	}
	if c.Pair != "" {
		if err := pairs.Validate(c.Pair); err != nil {
			errs = append(errs, err)
		}
	}
	for _, a := range []struct{ name, addr string }{{"grpc-advertise", c.GRPCAdvertise}, {"http-advertise", c.HTTPAdvertise}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := membership.SplitAdvertise(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.name, err))
		}
	}
	if c.MaxMessageSize <= 0 || c.MaxSessions <= 0 || c.SendBurst <= 0 || c.SendRate <= 0 || c.SubscriberBuffer <= 0 {
		errs = append(errs, errors.New("max-message-size, max-sessions, send-rate, send-burst and subscriber-buffer must be positive"))
	}
	if c.FlexDisconnectTimeout <= 0 || c.EndedSessionLinger < 0 {
		errs = append(errs, errors.New("flex-disconnect-timeout must be positive and ended-session-linger not negative"))
	}
	if c.TranscriptAutoSave < 0 || c.TranscriptAutoSave > 2 {
		errs = append(errs, fmt.Errorf("transcript-auto-save %d: want 0, 1 or 2", c.TranscriptAutoSave))
	}
	if c.TranscriptResendAttempts < 0 || c.TranscriptResendDelay < 0 {
		errs = append(errs, errors.New("transcript-resend-attempts and transcript-resend-delay must not be negative"))
	}
	if c.TranscriptSaveOnError != SaveOnErrorClose && c.TranscriptSaveOnError != SaveOnErrorContinue {
		errs = append(errs, fmt.Errorf("transcript-save-on-error %q: want close or continue", c.TranscriptSaveOnError))
	}
	if _, err := ParseSaveNotices(c.TranscriptSaveNotices); err != nil {
		errs = append(errs, err)
	}
	if c.TranscriptSaveLinger < 0 || c.TranscriptSaveLinger > time.Second {
		errs = append(errs, fmt.Errorf("transcript-save-linger %s: want 0 to 1s", c.TranscriptSaveLinger))
	}
	if c.TranscriptSaveTimeout <= 0 || c.TranscriptSaveWorkers <= 0 || c.TranscriptBreakerFailures <= 0 || c.TranscriptBreakerTimeout <= 0 {
		errs = append(errs, errors.New("transcript-save-timeout, -workers, -breaker-failures and -breaker-timeout must be positive"))
	}
	if c.SessionRestorationMode != RestorationSimple && c.SessionRestorationMode != RestorationNone {
		errs = append(errs, fmt.Errorf("session-restoration-mode %q: want simple or none", c.SessionRestorationMode))
	}
	if c.ReplicationTimeout <= 0 || c.ProbeTimeout <= 0 || c.EpochLease <= 0 {
		errs = append(errs, errors.New("replication-timeout, probe-timeout and epoch-lease must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bad core config: %w", err)
	}
	return nil
}

// NoticeSet is the set of notice kinds saved into the transcript
// (transcript-save-notices).
type NoticeSet uint8

// Notice kinds of transcript-save-notices.
const (
	NoticeTyping     NoticeSet = 1 << iota // TYPING_STARTED, TYPING_STOPPED
	NoticePushURL                          // PUSH_URL
	NoticeCustom                           // NOTICE
	NoticeSave                             // TRANSCRIPT_SAVED, TRANSCRIPT_SAVE_FAILED
	NoticeDisconnect                       // PARTICIPANT_DISCONNECTED, PARTICIPANT_RECONNECTED
	noticeAll        = NoticeTyping | NoticePushURL | NoticeCustom | NoticeSave | NoticeDisconnect
)

var noticeNames = map[string]NoticeSet{
	"typing": NoticeTyping, "push-url": NoticePushURL, "custom": NoticeCustom,
	"save": NoticeSave, "disconnect": NoticeDisconnect,
}

// ParseSaveNotices parses a transcript-save-notices value: "all", "none" or
// "" (nothing), or a comma-separated list of typing, push-url, custom, save,
// disconnect (case-insensitive, spaces ignored).
func ParseSaveNotices(v string) (NoticeSet, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	switch v {
	case "", "none":
		return 0, nil
	case "all":
		return noticeAll, nil
	}
	var set NoticeSet
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		n, ok := noticeNames[f]
		if !ok {
			return 0, fmt.Errorf("transcript-save-notices: unknown notice kind %q (want all, none or a list of typing, push-url, custom, save, disconnect)", f)
		}
		set |= n
	}
	return set, nil
}
