/**
 * async_chat — the wire contract.
 *
 * The classic contract (Message with sender/content, and sendMessage) is kept byte for byte: a client
 * generated from just
 *
 *   struct Message { 1: required string sender, 2: required string content }
 *   service ChatService { void sendMessage(1: Message message) }
 *
 * talks to this server unchanged. Everything else here is optional fields, new types and new methods.
 *
 * Wire: TCP port 9090 by default. The server tells each connection's transport (buffered or framed) and
 * protocol (binary, strict or not, or compact) from its first bytes, so any pairing works; the classic
 * one is TBufferedTransport + TBinaryProtocol.
 *
 * Delivery model, for client authors in any language:
 *   - Every room has its own sequence, assigned by the server: strictly increasing, without gaps, and
 *     never issued twice. A message's (room, seq) is its identity. The memory broker counts from 1; the
 *     Redis broker from a large base, and after Redis may have lost data it jumps to a higher one
 *     (Batch.renumbered says so): see the README.
 *   - Subscribers long-poll: subscribe() once, then call poll() in a loop, passing from_seq = the
 *     next_seq of the last Batch you received. Each Batch says where to resume (next_seq) and how many
 *     messages this subscriber will never get just before its first message (missed). Loss is never
 *     silent: if you see missed > 0, tell your user.
 *   - A reply lost with its connection costs a re-send, never a message: poll the same subscription
 *     again, from a new connection, with the same from_seq, and the same batch comes again. A poll
 *     without from_seq (as clients generated from older contracts send it) is at-most-once per batch.
 *   - To resume after a disconnect, subscribe again with from_seq = the last seq you delivered + 1.
 *     Messages still in the room's history are replayed; those that are not count in missed.
 */

namespace py chat
namespace java com.example.chat
namespace go chat

/** A chat message. Fields 1-2 are the classic contract; 3-6 were added later and are optional. */
struct Message {
    /** Who wrote it. Required and non-empty. */
    1: required string sender,
    /** The text. Required (may be empty), at most the server's content limit in UTF-8 bytes. */
    2: required string content,
    /** The room. Absent or empty means the room "general". */
    3: optional string room,
    /** Server-assigned: position in the room, strictly increasing, no gaps (but a renumbering). Ignored when sent. */
    4: optional i64 seq,
    /** Server-assigned: Unix time in milliseconds when the server accepted the message. Ignored when sent. */
    5: optional i64 sent_at_ms,
    /**
     * Client-chosen idempotency key. A retried send with the same id, from the same sender to the same
     * room, is stored and delivered once; the retry is answered with the first send's seq. The server
     * remembers the most recent ids of each room (a bounded window; see the README).
     */
    6: optional string client_msg_id,
}

/** Why a call was refused. */
enum ErrorCode {
    /** The request is malformed: a missing sender, a bad argument. Do not retry unchanged. */
    INVALID = 1,
    /** A string or count is over a server limit. Do not retry unchanged. */
    TOO_LARGE = 2,
    /** The subscription id is unknown: never issued, unsubscribed, or expired after idling. Subscribe again. */
    NO_SUCH_SUBSCRIPTION = 3,
    /** The client sends faster than it is allowed to. Retry later. */
    RATE_LIMITED = 4,
    /** The server cannot serve this now (shutting down, its broker is unreachable). Retry later, elsewhere. */
    UNAVAILABLE = 5,
    /** The connection has not proved who it is. */
    UNAUTHORIZED = 6,
}

/** A refusal the client can act on: code says what kind, reason says why in words. */
exception ChatError {
    1: ErrorCode code,
    2: string reason,
}

/** What subscribe() returns. */
struct Subscription {
    /** Opaque id to pass to poll() and unsubscribe(). */
    1: string subscription_id,
    /** The room subscribed to ("general" when the request named none). */
    2: string room,
    /** The seq of the first message this subscription will deliver. */
    3: i64 next_seq,
}

/** What poll() returns. */
struct Batch {
    /** Messages in seq order, each with room, seq and sent_at_ms set. May be empty. */
    1: list<Message> messages,
    /** Where this subscription resumes: the seq after the last message delivered (or skipped). */
    2: i64 next_seq,
    /**
     * How many messages this subscriber will never get between where this poll started and the batch's
     * first message (or next_seq, when the batch is empty): its queue overflowed and history no longer
     * held them, history no longer reached back to the seq it asked for, or the broker lost them. A batch
     * never has a gap after its first message: a loss is reported in the batch that follows it. Never
     * silent.
     */
    3: i64 missed,
    /**
     * True when the room's numbering jumped just before this batch's first message (or next_seq): its
     * store (Redis) may have lost data and numbering went on from a new, higher base, so that no seq is
     * ever issued twice. How many messages were lost before the jump is unknown; missed counts only those
     * lost after it. Tell your user that messages may be missing.
     */
    4: optional bool renumbered,
}

/** One room as one server sees it (stats()): for operators. */
struct RoomStats {
    1: string room,
    /** Subscriptions to this room on this server. */
    2: i32 subscribers,
    /** Messages waiting in those subscriptions' queues. */
    3: i64 queued,
    /** The fullest of those queues: a subscriber falling behind shows here first. */
    4: i32 max_queue_depth,
    /** Messages dropped from those subscriptions' queues (reported to them as missed), since they began. */
    5: i64 dropped,
}

/** What one server is doing (stats()): for operators. Counters run from the server's start. */
struct ServerStats {
    1: i32 connections,
    2: i64 connections_total,
    3: i32 subscriptions,
    /** Rooms with a subscriber on this server. */
    4: i32 rooms,
    5: i64 published,
    /** Messages returned by polls. */
    6: i64 delivered,
    /** Messages dropped from full queues (slow subscribers). */
    7: i64 dropped,
    /** Subscriptions removed after going unpolled for the subscription TTL. */
    8: i64 expired,
    9: bool broker_up,
    /** The broker URL, credentials removed. */
    10: string broker,
    11: double uptime_s,
    /** The rooms with the most subscribers, at most as many as asked for. */
    12: list<RoomStats> top_rooms,
    /**
     * Bytes this server's store takes: the memory broker's history, dedup records and rooms as counted
     * against --max-memory, or the SQLite file with its WAL on disk. Unset for Redis (shared: ask Redis).
     */
    13: optional i64 broker_bytes,
}

service ChatService {
    /**
     * The classic call: publish a message. Kept without `throws` so clients generated from the classic
     * contract keep working; a refusal arrives as a TApplicationException whose message says why
     * (for example "INVALID: sender is required").
     */
    void sendMessage(1: Message message),

    /**
     * Publish a message and return its seq in the room. A retry carrying the same client_msg_id (same
     * sender, same room) returns the first send's seq and is not stored again.
     */
    i64 publish(1: Message message) throws (1: ChatError error),

    /**
     * Subscribe to a room ("" means "general").
     * from_seq = 0: deliver only messages published after this call.
     * from_seq = N >= 1: replay from seq N out of the room's history, then continue live. Messages no
     * longer in history are reported in the first Batch's missed. An N past the room's end (the server
     * restarted and forgot the room) replays the room from its oldest retained message; next_seq says so.
     * A subscription that is not polled for the server's subscription TTL expires.
     */
    Subscription subscribe(1: string room, 2: i64 from_seq) throws (1: ChatError error),

    /**
     * Long-poll a subscription. Returns at once when messages are waiting; otherwise waits up to wait_ms
     * (capped by the server's maximum) for the first one, and returns an empty Batch if none came.
     * Returns at most max_messages (1 or more; capped by the server's maximum).
     * from_seq (optional; 0 or absent: "from where the server thinks I am") is where the client is: the
     * next_seq of the last Batch it received, or the Subscription's next_seq before the first poll. One
     * lower than the server's position means the last reply was lost: that batch is served again (or read
     * back from history, counting in missed only what history no longer holds). A from_seq past the
     * server's position is INVALID. Polls on one subscription are served one at a time.
     * linger_ms (optional; 0 or absent: answer as soon as a message is waiting) trades a little latency for
     * fewer, larger batches, as Kafka's fetch.max.wait and Nagle's algorithm do: once a message is waiting,
     * the server waits up to linger_ms more for others (capped like wait_ms), and answers at once when
     * max_messages are waiting. A message then waits at most linger_ms longer; a busy room costs the
     * server and the subscriber one reply per linger_ms instead of one per message. A poll that replays
     * history does not linger.
     */
    Batch poll(1: string subscription_id, 2: i32 max_messages, 3: i32 wait_ms, 4: i64 from_seq,
               5: i32 linger_ms) throws (1: ChatError error),

    /** End a subscription and free its queue. Unknown ids are ignored. */
    void unsubscribe(1: string subscription_id),

    /**
     * Read a room's retained history: up to `limit` messages with seq >= from_seq (from_seq 0 or 1 means
     * from the oldest retained), oldest first. The room keeps a bounded number of recent messages.
     */
    list<Message> history(1: string room, 2: i64 from_seq, 3: i32 limit) throws (1: ChatError error),

    /**
     * Prove who this connection is, once, before other calls; returns the identity the token names. Only
     * servers started with authentication need it (the others return ""), and on those every other call
     * before it is refused UNAUTHORIZED, and every message this connection sends gets this identity as
     * its sender, whatever the message says.
     */
    string authenticate(1: string token) throws (1: ChatError error),

    /** What this server is doing, with its `max_rooms` (0..1000) busiest rooms. For operators. */
    ServerStats stats(1: i32 max_rooms) throws (1: ChatError error),
}
