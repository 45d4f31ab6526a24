package proxy

// closeReason is why funnel closed a client. Its String is the label of
// funnel_client_connections_closed_total and the reason in the log line.
type closeReason uint8

const (
	notClosed               closeReason = iota
	closedByClient                      // the client hung up (EOF or reset)
	closedQuit                          // QUIT
	closedProtocol                      // a malformed request, answered with Redis's protocol error
	closedCrossProtocol                 // a POST or Host: line: a browser was made to talk to funnel
	closedOutputLimit                   // more than --client-output-limit of replies held for it
	closedPubSubOutputLimit             // a subscriber whose messages piled up
	closedPubSubUnconfirmed             // the upstream did not confirm its subscription
	closedWriteTimeout                  // a reply write blocked past --client-write-timeout
	closedWriteError                    // a reply write failed
	closedMaxClients                    // --max-clients reached
	closedShutdown                      // funnel is shutting down
	closedPanic                         // a bug in funnel; only this client was closed
	closedMemory                        // funnel stayed at --max-memory too long while it waited to read
	closedEventLoop                     // the client's socket could not be watched (epoll_ctl failed)
	numCloseReasons
)

var closeReasonNames = [numCloseReasons]string{
	notClosed: "", closedByClient: "client_closed", closedQuit: "quit", closedProtocol: "protocol_error",
	closedCrossProtocol: "cross_protocol", closedOutputLimit: "output_limit",
	closedPubSubOutputLimit: "pubsub_output_limit", closedPubSubUnconfirmed: "pubsub_unconfirmed",
	closedWriteTimeout: "write_timeout", closedWriteError: "write_error", closedMaxClients: "max_clients",
	closedShutdown: "shutdown", closedPanic: "panic", closedMemory: "memory_limit",
	closedEventLoop: "event_loop",
}

func (c closeReason) String() string { return closeReasonNames[c] }

// advice is what the log line tells the operator about a close that is not
// the client's own doing; "" for the ordinary ones, which are logged at
// debug level.
func (c closeReason) advice() string {
	switch c {
	case closedOutputLimit:
		return "the client did not read its replies; raise --client-output-limit if it reads big replies slowly on purpose"
	case closedPubSubOutputLimit:
		return "a subscriber did not keep up with its messages; make it read faster or publish less"
	case closedPubSubUnconfirmed:
		return "the upstream did not confirm a subscription in time; check the upstream's health"
	case closedWriteTimeout:
		return "a reply write blocked too long; the client stopped reading, or raise --client-write-timeout"
	case closedCrossProtocol:
		return "something sent HTTP to funnel (a browser page or a scanner); make sure funnel's port is not reachable from untrusted networks"
	case closedPanic:
		return "this is a bug in funnel: please report it with the stack logged above"
	case closedMemory:
		return "funnel stayed at --max-memory; raise it, or find the clients sending or reading huge values"
	case closedProtocol:
		return "the client sent bytes that are not RESP; check its Redis library"
	case closedEventLoop:
		return "the kernel refused to watch the client's socket; check the open files limit and the kernel log"
	}
	return ""
}

// errorKind is a kind of error funnel answers a client with, the label of
// funnel_errors_total (the pool counts the upstream kinds itself).
type errorKind uint8

const (
	errClientProtocol errorKind = iota // a malformed request
	errCrossProtocol                   // a POST or Host: line
	errRefused                         // a command funnel does not support
	errAuthFailed                      // a wrong password
	numErrorKinds
)

var errorKindNames = [numErrorKinds]string{
	errClientProtocol: "client_protocol", errCrossProtocol: "cross_protocol",
	errRefused: "refused", errAuthFailed: "auth_failed",
}

func (k errorKind) String() string { return errorKindNames[k] }

// countError counts an error funnel answered.
func (srv *Server) countError(k errorKind) {
	srv.metrics.Errors.WithLabelValues(k.String()).Inc()
}
