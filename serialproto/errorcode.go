package serialproto

import "fmt"

// ErrorCode is the numeric code of an ERROR (docs/protocol.md §12).
type ErrorCode uint8

// The error code table.
const (
	CodeUnknownCommand     ErrorCode = 1
	CodeUnsupportedVersion ErrorCode = 2
	CodeMalformed          ErrorCode = 3
	CodeNoSession          ErrorCode = 4
	CodeTooLarge           ErrorCode = 5
	CodeBusy               ErrorCode = 6
	CodeTimeout            ErrorCode = 7
	CodeCancelled          ErrorCode = 8
	CodeModelNotFound      ErrorCode = 9
	CodeBackendUnavailable ErrorCode = 10
	CodeBackendFailed      ErrorCode = 11
	CodeAuthRequired       ErrorCode = 12
	CodeAuthFailed         ErrorCode = 13
	CodeShuttingDown       ErrorCode = 14
	CodeRateLimited        ErrorCode = 15
	CodeIncomplete         ErrorCode = 16
	CodeUnsupportedOption  ErrorCode = 17
	CodeUnexpected         ErrorCode = 18
	CodeUnknownRequest     ErrorCode = 19
	CodeInternal           ErrorCode = 20
	CodeForbidden          ErrorCode = 21
	CodeToolTimeout        ErrorCode = 22 // a device tool did not answer in time (§16)
	CodeToolLimit          ErrorCode = 23 // too many tool calls, or a result too large (§16)
)

var errorCodes = [...]struct {
	name      string
	retryable bool
}{
	CodeUnknownCommand:     {"UNKNOWN_COMMAND", false},
	CodeUnsupportedVersion: {"UNSUPPORTED_VERSION", false},
	CodeMalformed:          {"MALFORMED", false},
	CodeNoSession:          {"NO_SESSION", true},
	CodeTooLarge:           {"TOO_LARGE", false},
	CodeBusy:               {"BUSY", true},
	CodeTimeout:            {"TIMEOUT", true},
	CodeCancelled:          {"CANCELLED", false},
	CodeModelNotFound:      {"MODEL_NOT_FOUND", false},
	CodeBackendUnavailable: {"BACKEND_UNAVAILABLE", true},
	CodeBackendFailed:      {"BACKEND_FAILED", true},
	CodeAuthRequired:       {"AUTH_REQUIRED", false},
	CodeAuthFailed:         {"AUTH_FAILED", false},
	CodeShuttingDown:       {"SHUTTING_DOWN", true},
	CodeRateLimited:        {"RATE_LIMITED", true},
	CodeIncomplete:         {"INCOMPLETE", true},
	CodeUnsupportedOption:  {"UNSUPPORTED_OPTION", false},
	CodeUnexpected:         {"UNEXPECTED", false},
	CodeUnknownRequest:     {"UNKNOWN_REQUEST", false},
	CodeInternal:           {"INTERNAL", true},
	CodeForbidden:          {"FORBIDDEN", false},
	CodeToolTimeout:        {"TOOL_TIMEOUT", false},
	CodeToolLimit:          {"TOOL_LIMIT", false},
}

// Known reports whether c is in the table.
func (c ErrorCode) Known() bool { return int(c) < len(errorCodes) && errorCodes[c].name != "" }

// Retryable is the table's verdict; unknown codes are not retryable (a
// receiver of an unknown code reads the ERROR's RETRYABLE flag instead).
func (c ErrorCode) Retryable() bool { return c.Known() && errorCodes[c].retryable }

func (c ErrorCode) String() string {
	if c.Known() {
		return errorCodes[c].name
	}
	return fmt.Sprintf("ERROR_CODE(%d)", uint8(c))
}
