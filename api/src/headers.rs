//! Header names for authentication and idempotency, shared by servers and clients.

/// The cluster's shared token, required on every private route.
pub const TOKEN: &str = "x-skyclaw-token";

/// Names a mutating request so that retrying it returns the original response.
pub const IDEMPOTENCY_KEY: &str = "x-idempotency-key";

/// The IETF draft spelling of [`IDEMPOTENCY_KEY`], accepted as well.
pub const IDEMPOTENCY_KEY_ALT: &str = "idempotency-key";

/// The error code of an error answer, as its envelope has it: a HEAD answer
/// has no body to carry the envelope, so clients read the code here.
pub const ERROR_CODE: &str = "x-skyclaw-error";

/// An idempotency key longer than this is refused: keys are stored per request.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
