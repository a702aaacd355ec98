/* SPDX-License-Identifier: MIT
 * sizeof the caller-owned structures, read back with nm -S. */
#include "mcpf.h"
#include "mcpf_session.h"

char size_mcpf_decoder[sizeof(mcpf_decoder)];
char size_mcpf_session[sizeof(mcpf_session)];
char size_mcpf_reasm[sizeof(mcpf_reasm)];
