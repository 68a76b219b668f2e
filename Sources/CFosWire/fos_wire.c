#include "fos_wire.h"

#include <errno.h>
#include <string.h>

int fos_msg_validate(const void *buf, size_t len) {
    fos_msg_hdr h;
    if (len < sizeof h) return EBADMSG;
    memcpy(&h, buf, sizeof h);
    if (h.version != FOS_WIRE_VERSION) return EPROTO;
    if (h.opcode == 0) return EPROTO;
    if (h.payload_len > FOS_MAX_PAYLOAD) return EMSGSIZE;
    if ((size_t)h.payload_len + sizeof h != len) return EBADMSG;
    if (h.flags & ~(uint32_t)(FOS_MSG_REPLY | FOS_MSG_ONEWAY | FOS_MSG_AHEAD | FOS_MSG_AHEAD_OK)) return EPROTO;
    return 0;
}

int fos_ctl_validate(const void *buf, size_t len) {
    fos_ctl_hdr h;
    if (len < sizeof h) return EBADMSG;
    memcpy(&h, buf, sizeof h);
    if (h.version != FOS_WIRE_VERSION) return EPROTO;
    if (h.len != len) return EBADMSG;
    if (len > FOS_CTL_MAX_DATAGRAM) return EMSGSIZE;
    if (h.op == 0) return EPROTO;
    return 0;
}

int fos_name_validate(const char *name, size_t len) {
    if (len < 2 || len > FOS_MAX_NAME || name[0] != '/') return EINVAL;
    size_t start = 1;
    for (size_t i = 1; i <= len; i++) {
        if (i == len || name[i] == '/') {
            size_t n = i - start;
            if (n == 0) return EINVAL;
            if (n == 1 && name[start] == '.') return EINVAL;
            if (n == 2 && name[start] == '.' && name[start + 1] == '.') return EINVAL;
            start = i + 1;
            continue;
        }
        unsigned char c = (unsigned char)name[i];
        if (c <= 0x20 || c >= 0x7f) return EINVAL;
    }
    return 0;
}
