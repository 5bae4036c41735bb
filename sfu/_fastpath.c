/* The forwarding fast path: one incoming RTP packet to every consumer in its steady state.
 *
 * Why: per forwarded packet, the pure-Python path (sfu/consumer.py, Consumer.forward) pays a
 * header pack and a join, pylibsrtp's Python wrapper (cffi allocations, two buffer copies) and
 * one asyncio sendto (one syscall) per consumer. Here, for one packet and a tuple of consumers,
 * each eligible consumer's copy is built in a fixed buffer, protected by calling libsrtp's own
 * srtp_protect (pylibsrtp's copy of libsrtp, through the function pointer cffi gives: no
 * second libsrtp), and all copies go out with sendmmsg on the worker's shared UDP socket.
 *
 * The per-consumer state lives in `StreamBase`, the base class of sfu.consumer.Consumer: its
 * members are the Consumer's attributes (max_seq, seq_off, ...), read and written by both paths,
 * so moving a consumer from one path to the other never loses a sequence number. A consumer
 * that is not in its steady state (not bound, paused, waiting for a keyframe, another source
 * SSRC, no fast send set, a packet too long) is handed back to Python, which forwards it.
 *
 * Errors never raise into the receive path: a failed protect or send is counted and the copy
 * dropped (it is UDP; the subscriber NACKs it). Every array is bounded (BATCH copies per
 * sendmmsg call).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64                 /* copies per sendmmsg call */
#define SRTP_TRAILER 144         /* SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN, as pylibsrtp reserves */
#define SRTP_BUFFER 1500         /* pylibsrtp's buffer: the longest packet the slow path takes */
#define MAX_PLAIN (SRTP_BUFFER - SRTP_TRAILER)
#define MAX_EXT 64               /* bytes of a consumer's header-extension block (MID + abs) */

typedef int (*srtp_protect_fn)(void *ctx, void *rtp_hdr, int *len_ptr);

static srtp_protect_fn srtp_protect = NULL;
static srtp_protect_fn srtp_unprotect = NULL; /* same signature in libsrtp 2.x */
static srtp_protect_fn srtp_protect_rtcp = NULL;   /* so are srtp_protect_rtcp ... */
static srtp_protect_fn srtp_unprotect_rtcp = NULL; /* ... and srtp_unprotect_rtcp */
static unsigned long long send_errors_total = 0;
static unsigned long long protect_errors_total = 0;

/* --- SocketFd: a duplicate of a socket's descriptor, closed when the last user goes ----------
 * A stream keeps one reference: the descriptor it sends on can never be closed under it and
 * reused by another file while it lives (the shared socket may close first, at shutdown). */

typedef struct {
    PyObject_HEAD
    int fd;
} SocketFd;

static int SocketFd_init(SocketFd *self, PyObject *args, PyObject *kwds) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return -1;
    if (self->fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "SocketFd already initialised");
        return -1;
    }
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->fd = dup_fd;
    return 0;
}

static PyObject *SocketFd_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    SocketFd *self = (SocketFd *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static void SocketFd_dealloc(SocketFd *self) {
    if (self->fd >= 0)
        close(self->fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *SocketFd_fileno(SocketFd *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->fd);
}

static PyMethodDef SocketFd_methods[] = {
    {"fileno", (PyCFunction)SocketFd_fileno, METH_NOARGS, "The duplicated descriptor."},
    {NULL},
};

static PyTypeObject SocketFdType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastpath.SocketFd",
    .tp_doc = "A duplicate of a socket descriptor, closed on deallocation.",
    .tp_basicsize = sizeof(SocketFd),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = SocketFd_new,
    .tp_init = (initproc)SocketFd_init,
    .tp_dealloc = (destructor)SocketFd_dealloc,
    .tp_methods = SocketFd_methods,
};

/* --- StreamBase: a consumer's per-packet state ------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    /* Python-visible members (sfu.consumer.Consumer attributes) */
    char bound;
    char paused;
    char waiting_keyframe;
    char has_abs;
    long long pt;
    long long ssrc;
    long long x_bit;
    long long src_ssrc;
    long long seq_off;
    long long ts_off;
    long long max_seq;
    long long max_ts;
    long long packets;
    long long octets;
    PyObject *last_time;  /* None or float */
    PyObject *ext_before; /* bytes */
    PyObject *ext_after;  /* bytes */
    /* fast send (set_fast_send), C only */
    PyObject *srtp_owner; /* keeps the SRTP session (and so its srtp_t) alive */
    PyObject *fd_owner;   /* SocketFd */
    void *srtp_ctx;
    int fd;
    socklen_t addr_len;
    struct sockaddr_storage addr;
} StreamBase;

static int StreamBase_traverse(StreamBase *self, visitproc visit, void *arg) {
    Py_VISIT(self->last_time);
    Py_VISIT(self->ext_before);
    Py_VISIT(self->ext_after);
    Py_VISIT(self->srtp_owner);
    Py_VISIT(self->fd_owner);
    return 0;
}

static int StreamBase_clear(StreamBase *self) {
    Py_CLEAR(self->last_time);
    Py_CLEAR(self->ext_before);
    Py_CLEAR(self->ext_after);
    Py_CLEAR(self->srtp_owner);
    Py_CLEAR(self->fd_owner);
    self->srtp_ctx = NULL;
    self->fd = -1;
    return 0;
}

static void StreamBase_dealloc(StreamBase *self) {
    PyObject_GC_UnTrack(self);
    StreamBase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *StreamBase_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    StreamBase *self = (StreamBase *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->paused = 1;
    self->waiting_keyframe = 1;
    self->src_ssrc = -1;
    self->fd = -1;
    self->last_time = Py_NewRef(Py_None);
    self->ext_before = PyBytes_FromStringAndSize(NULL, 0);
    self->ext_after = Py_NewRef(self->ext_before);
    if (self->ext_before == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* set_fast_send(srtp_owner, srtp_ctx, fd_owner, host, port); set_fast_send(None) clears it. */
static PyObject *StreamBase_set_fast_send(StreamBase *self, PyObject *args) {
    PyObject *owner, *fd_owner = NULL;
    unsigned long long ctx = 0;
    const char *host = NULL;
    int port = 0;
    if (!PyArg_ParseTuple(args, "O|KOsi", &owner, &ctx, &fd_owner, &host, &port))
        return NULL;
    Py_CLEAR(self->srtp_owner);
    Py_CLEAR(self->fd_owner);
    self->srtp_ctx = NULL;
    self->fd = -1;
    if (owner == Py_None)
        Py_RETURN_FALSE;
    if (fd_owner == NULL || !PyObject_TypeCheck(fd_owner, &SocketFdType) || host == NULL || ctx == 0) {
        PyErr_SetString(PyExc_TypeError, "set_fast_send(session, ctx, SocketFd, host, port)");
        return NULL;
    }
    memset(&self->addr, 0, sizeof(self->addr));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->addr;
    if (port <= 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "bad port");
        return NULL;
    }
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        self->addr_len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        self->addr_len = sizeof(*v6);
    } else {
        Py_RETURN_FALSE; /* a host name or scoped address: the slow path sends */
    }
    self->srtp_owner = Py_NewRef(owner);
    self->fd_owner = Py_NewRef(fd_owner);
    self->srtp_ctx = (void *)(uintptr_t)ctx;
    self->fd = ((SocketFd *)fd_owner)->fd;
    Py_RETURN_TRUE;
}

static PyObject *StreamBase_get_fast(StreamBase *self, void *closure) {
    return PyBool_FromLong(self->srtp_ctx != NULL && self->fd >= 0);
}

static PyMemberDef StreamBase_members[] = {
    {"bound", T_BOOL, offsetof(StreamBase, bound), 0, NULL},
    {"paused", T_BOOL, offsetof(StreamBase, paused), 0, NULL},
    {"waiting_keyframe", T_BOOL, offsetof(StreamBase, waiting_keyframe), 0, NULL},
    {"has_abs", T_BOOL, offsetof(StreamBase, has_abs), 0, NULL},
    {"pt", T_LONGLONG, offsetof(StreamBase, pt), 0, NULL},
    {"ssrc", T_LONGLONG, offsetof(StreamBase, ssrc), 0, NULL},
    {"x_bit", T_LONGLONG, offsetof(StreamBase, x_bit), 0, NULL},
    {"src_ssrc", T_LONGLONG, offsetof(StreamBase, src_ssrc), 0, NULL},
    {"seq_off", T_LONGLONG, offsetof(StreamBase, seq_off), 0, NULL},
    {"ts_off", T_LONGLONG, offsetof(StreamBase, ts_off), 0, NULL},
    {"max_seq", T_LONGLONG, offsetof(StreamBase, max_seq), 0, NULL},
    {"max_ts", T_LONGLONG, offsetof(StreamBase, max_ts), 0, NULL},
    {"packets", T_LONGLONG, offsetof(StreamBase, packets), 0, NULL},
    {"octets", T_LONGLONG, offsetof(StreamBase, octets), 0, NULL},
    {"last_time", T_OBJECT, offsetof(StreamBase, last_time), 0, NULL},
    {"ext_before", T_OBJECT, offsetof(StreamBase, ext_before), 0, NULL},
    {"ext_after", T_OBJECT, offsetof(StreamBase, ext_after), 0, NULL},
    {NULL},
};

static PyGetSetDef StreamBase_getset[] = {
    {"fast_send", (getter)StreamBase_get_fast, NULL, "Whether set_fast_send() gave a send path.", NULL},
    {NULL},
};

static PyMethodDef StreamBase_methods[] = {
    {"set_fast_send", (PyCFunction)StreamBase_set_fast_send, METH_VARARGS,
     "set_fast_send(session, srtp_ctx, SocketFd, host, port) or set_fast_send(None)."},
    {NULL},
};

static PyTypeObject StreamBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sfu._fastpath.StreamBase",
    .tp_doc = "A consumer's per-packet state, shared by the C and the Python forwarding paths.",
    .tp_basicsize = sizeof(StreamBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = StreamBase_new,
    .tp_traverse = (traverseproc)StreamBase_traverse,
    .tp_clear = (inquiry)StreamBase_clear,
    .tp_dealloc = (destructor)StreamBase_dealloc,
    .tp_members = StreamBase_members,
    .tp_getset = StreamBase_getset,
    .tp_methods = StreamBase_methods,
};

/* --- forward ---------------------------------------------------------------------------------- */

static unsigned char buffers[BATCH][SRTP_BUFFER];
static struct mmsghdr messages[BATCH];
static struct iovec iovs[BATCH];

/* Sends messages[0:count] on fd; returns the copies that could not be sent. */
static int flush(int fd, int count) {
    int i = 0, failed = 0, interrupted = 0;
    while (i < count) {
        int r = sendmmsg(fd, messages + i, (unsigned int)(count - i), 0);
        if (r > 0) {
            i += r;
        } else if (r < 0 && errno == EINTR && interrupted < 3) {
            interrupted++;
        } else {
            /* EAGAIN (the socket buffer is full), or an error about this copy: drop it and go on
             * with the next one (each turn moves on by at least one: bounded). */
            failed++;
            i++;
        }
    }
    return failed;
}

/* forward(consumers, data, offset, ssrc, now, abs3) -> (sent, errors, rest)
 * rest: the consumers this call did not handle (None when there are none), for the slow path. */
static PyObject *fastpath_forward(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyTuple_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "forward(consumers: tuple, data: bytes, offset, ssrc, now, abs3: bytes)");
        return NULL;
    }
    PyObject *consumers = args[0];
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    long long ssrc = PyLong_AsLongLong(args[3]);
    PyObject *now = args[4];
    if (PyErr_Occurred())
        return NULL;
    if (offset < 12 || offset > size || PyBytes_GET_SIZE(args[5]) != 3 || !PyFloat_Check(now)) {
        PyErr_SetString(PyExc_ValueError, "bad offset, abs3 or now");
        return NULL;
    }
    const unsigned char *abs3 = (const unsigned char *)PyBytes_AS_STRING(args[5]);
    const unsigned char *payload = data + offset;
    Py_ssize_t plen = size - offset;
    unsigned int seq = (unsigned int)data[2] << 8 | data[3];
    uint32_t ts = (uint32_t)data[4] << 24 | (uint32_t)data[5] << 16 | (uint32_t)data[6] << 8 | data[7];
    unsigned char b0 = data[0], b1 = data[1];

    PyObject *rest = NULL;
    long sent = 0, errors = 0;
    int count = 0, batch_fd = -1;
    Py_ssize_t n = PyTuple_GET_SIZE(consumers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(consumers, i);
        StreamBase *s = (StreamBase *)item;
        if (!PyObject_TypeCheck(item, &StreamBaseType) || !s->bound || s->paused || s->waiting_keyframe ||
            s->src_ssrc != ssrc || s->srtp_ctx == NULL || s->fd < 0 || srtp_protect == NULL ||
            !PyBytes_Check(s->ext_before) || !PyBytes_Check(s->ext_after)) {
            goto slow;
        }
        Py_ssize_t before = PyBytes_GET_SIZE(s->ext_before), after = PyBytes_GET_SIZE(s->ext_after);
        if (before > MAX_EXT || after > MAX_EXT)
            goto slow;
        Py_ssize_t total = 12 + before + (s->has_abs ? 3 + after : 0) + plen;
        if (total > MAX_PLAIN)
            goto slow; /* the slow path refuses it the same way (pylibsrtp: too long) */
        if (count == BATCH || (count > 0 && s->fd != batch_fd)) {
            errors += flush(batch_fd, count);
            count = 0;
        }
        unsigned char *out = buffers[count];
        unsigned int oseq = (unsigned int)((seq + (unsigned long long)s->seq_off) & 0xFFFF);
        uint32_t ots = (uint32_t)((ts + (unsigned long long)s->ts_off) & 0xFFFFFFFFu);
        uint32_t ossrc = (uint32_t)s->ssrc;
        out[0] = (unsigned char)(0x80 | (s->x_bit & 0x10) | (b0 & 0x20));
        out[1] = (unsigned char)((b1 & 0x80) | (s->pt & 0x7F));
        out[2] = (unsigned char)(oseq >> 8);
        out[3] = (unsigned char)oseq;
        out[4] = (unsigned char)(ots >> 24);
        out[5] = (unsigned char)(ots >> 16);
        out[6] = (unsigned char)(ots >> 8);
        out[7] = (unsigned char)ots;
        out[8] = (unsigned char)(ossrc >> 24);
        out[9] = (unsigned char)(ossrc >> 16);
        out[10] = (unsigned char)(ossrc >> 8);
        out[11] = (unsigned char)ossrc;
        unsigned char *p = out + 12;
        memcpy(p, PyBytes_AS_STRING(s->ext_before), before);
        p += before;
        if (s->has_abs) {
            memcpy(p, abs3, 3);
            memcpy(p + 3, PyBytes_AS_STRING(s->ext_after), after);
            p += 3 + after;
        }
        memcpy(p, payload, plen);
        int len = (int)total;
        if (srtp_protect(s->srtp_ctx, out, &len) != 0 || len <= 0 || len > SRTP_BUFFER) {
            protect_errors_total++;
            errors++;
            continue;
        }
        iovs[count].iov_base = out;
        iovs[count].iov_len = (size_t)len;
        memset(&messages[count], 0, sizeof(messages[count]));
        messages[count].msg_hdr.msg_name = &s->addr;
        messages[count].msg_hdr.msg_namelen = s->addr_len;
        messages[count].msg_hdr.msg_iov = &iovs[count];
        messages[count].msg_hdr.msg_iovlen = 1;
        batch_fd = s->fd;
        count++;
        /* What Consumer.forward does after its send. */
        if (((oseq - (unsigned long long)s->max_seq) & 0xFFFF) < 0x8000) {
            s->max_seq = oseq;
            s->max_ts = ots;
            PyObject *old = s->last_time;
            s->last_time = Py_NewRef(now);
            Py_XDECREF(old);
        }
        s->packets += 1;
        s->octets += plen;
        sent++;
        continue;
    slow:
        if (rest == NULL && (rest = PyList_New(0)) == NULL)
            goto fail;
        if (PyList_Append(rest, item) < 0)
            goto fail;
    }
    if (count > 0)
        errors += flush(batch_fd, count);
    send_errors_total += (unsigned long long)errors;
    if (rest == NULL)
        rest = Py_NewRef(Py_None);
    return Py_BuildValue("llN", sent, errors, rest);
fail:
    if (count > 0)
        flush(batch_fd, count);
    Py_XDECREF(rest);
    return NULL;
}

/* One libsrtp call on a copy of one packet, in a fixed buffer: what pylibsrtp's Session does
 * without its Python wrapper (cffi allocations, a second copy, an exception per failure).
 * args: (ctx: int, data: bytes). None when the call fails (authentication, replay, no room) or
 * the packet is shorter than `min_len` or longer than `max_in`; a failed protect is counted. */
static unsigned char copy_buffer[SRTP_BUFFER];

static PyObject *srtp_on_copy(PyObject *const *args, Py_ssize_t nargs, const char *usage, srtp_protect_fn fn,
                              Py_ssize_t min_len, Py_ssize_t max_in, int protecting) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    unsigned long long ctx = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    if (ctx == 0 || fn == NULL || size < min_len || size > max_in)
        Py_RETURN_NONE;
    memcpy(copy_buffer, PyBytes_AS_STRING(args[1]), (size_t)size);
    int len = (int)size;
    int failed = fn((void *)(uintptr_t)ctx, copy_buffer, &len) != 0;
    if (protecting) {
        if (failed || len <= size || len > SRTP_BUFFER) {
            protect_errors_total++;
            Py_RETURN_NONE;
        }
    } else if (failed || len < min_len || len > size) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)copy_buffer, len);
}

/* unprotect(ctx, data) -> bytes or None: libsrtp's srtp_unprotect (the lean receive path). */
static PyObject *fastpath_unprotect(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return srtp_on_copy(args, nargs, "unprotect(ctx: int, data: bytes)", srtp_unprotect, 12, SRTP_BUFFER, 0);
}

/* unprotect_rtcp(ctx, data) -> bytes or None: libsrtp's srtp_unprotect_rtcp (the lean RTCP path
 * of subscriber connections). */
static PyObject *fastpath_unprotect_rtcp(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return srtp_on_copy(args, nargs, "unprotect_rtcp(ctx: int, data: bytes)", srtp_unprotect_rtcp, 8, SRTP_BUFFER, 0);
}

/* protect_rtcp(ctx, data) -> bytes or None: libsrtp's srtp_protect_rtcp (sender reports sent in
 * batches); None when it fails or the protected packet would not fit. */
static PyObject *fastpath_protect_rtcp(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    return srtp_on_copy(args, nargs, "protect_rtcp(ctx: int, data: bytes)", srtp_protect_rtcp, 8, MAX_PLAIN, 1);
}

static int set_function(PyObject *arg, srtp_protect_fn *target) {
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return -1;
    *target = (srtp_protect_fn)(uintptr_t)address;
    return 0;
}

static PyObject *fastpath_set_unprotect(PyObject *module, PyObject *arg) {
    if (set_function(arg, &srtp_unprotect) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *fastpath_set_protect(PyObject *module, PyObject *arg) {
    if (set_function(arg, &srtp_protect) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *fastpath_set_rtcp(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_rtcp(protect_rtcp_address, unprotect_rtcp_address)");
        return NULL;
    }
    if (set_function(args[0], &srtp_protect_rtcp) < 0 || set_function(args[1], &srtp_unprotect_rtcp) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *fastpath_counters(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("{s:K,s:K}", "send_errors", send_errors_total, "protect_errors", protect_errors_total);
}

static PyMethodDef fastpath_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))fastpath_forward, METH_FASTCALL,
     "forward(consumers, data, offset, ssrc, now, abs3) -> (sent, errors, rest)"},
    {"set_protect", fastpath_set_protect, METH_O, "The address of libsrtp's srtp_protect (libsrtp 2.x)."},
    {"unprotect", (PyCFunction)(void (*)(void))fastpath_unprotect, METH_FASTCALL,
     "unprotect(ctx, data) -> bytes or None (libsrtp's srtp_unprotect)"},
    {"set_unprotect", fastpath_set_unprotect, METH_O, "The address of libsrtp's srtp_unprotect (libsrtp 2.x)."},
    {"unprotect_rtcp", (PyCFunction)(void (*)(void))fastpath_unprotect_rtcp, METH_FASTCALL,
     "unprotect_rtcp(ctx, data) -> bytes or None (libsrtp's srtp_unprotect_rtcp)"},
    {"protect_rtcp", (PyCFunction)(void (*)(void))fastpath_protect_rtcp, METH_FASTCALL,
     "protect_rtcp(ctx, data) -> bytes or None (libsrtp's srtp_protect_rtcp)"},
    {"set_rtcp", (PyCFunction)(void (*)(void))fastpath_set_rtcp, METH_FASTCALL,
     "set_rtcp(protect_address, unprotect_address): libsrtp's srtp_protect_rtcp, srtp_unprotect_rtcp."},
    {"counters", fastpath_counters, METH_NOARGS, "Errors counted since the start of the process."},
    {NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "sfu._fastpath", "The compiled forwarding fast path (see sfu/fastpath.py).", -1,
    fastpath_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&StreamBaseType) < 0 || PyType_Ready(&SocketFdType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "StreamBase", (PyObject *)&StreamBaseType) < 0 ||
        PyModule_AddObjectRef(m, "SocketFd", (PyObject *)&SocketFdType) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 || PyModule_AddIntConstant(m, "MAX_PLAIN", MAX_PLAIN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
