package descriptor

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
)

// DefaultTarget is the target when neither the argument nor $DESCRIPTOR_TARGET
// names one.
const DefaultTarget = "127.0.0.1:5051"

// DefaultTimeout is the deadline of a call whose context has none, unless
// WithTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// Option configures a Client (and a descriptorcache provider).
type Option func(*options) error

type options struct {
	timeout      time.Duration
	token        *string
	tlsConfig    *tls.Config
	tlsFiles     *tlsFiles
	serverName   string
	interceptors []grpc.UnaryClientInterceptor
	dialOptions  []grpc.DialOption
	noRetry      bool
	propagator   propagation.TextMapPropagator
}

type tlsFiles struct{ ca, cert, key string }

// WithTimeout sets the deadline of every call whose context has no deadline of
// its own (default DefaultTimeout); 0 means no default deadline.
func WithTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("descriptor: negative timeout %v", d)
		}
		o.timeout = d
		return nil
	}
}

// WithToken sends token as a bearer token ("authorization: Bearer <token>") on
// every call. Without this option the client sends $DESCRIPTOR_TOKEN when it is
// set; WithToken("") sends none.
func WithToken(token string) Option {
	return func(o *options) error {
		o.token = &token
		return nil
	}
}

// WithTLSConfig turns on TLS with this configuration (set Certificates for mTLS,
// RootCAs for a private CA).
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *options) error {
		if cfg == nil {
			return errors.New("descriptor: nil TLS config")
		}
		o.tlsConfig = cfg.Clone()
		return nil
	}
}

// WithTLSFiles turns on TLS from PEM files: caFile verifies the server (empty:
// the system roots); certFile and keyFile, both or neither, are the client
// certificate for mTLS. The files are read by New.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(o *options) error {
		if (certFile == "") != (keyFile == "") {
			return errors.New("descriptor: a client certificate needs both certFile and keyFile")
		}
		o.tlsFiles = &tlsFiles{caFile, certFile, keyFile}
		return nil
	}
}

// WithServerName sets the name the server's certificate is checked against
// (default: the host of the target).
func WithServerName(name string) Option {
	return func(o *options) error {
		o.serverName = name
		return nil
	}
}

// WithUnaryInterceptor adds a client interceptor, run in the order given, outside
// the client's trace-context propagation and its retry of SERVER_DRAINING (for
// example to log, or to start a client span, whose context is then the one sent).
func WithUnaryInterceptor(i grpc.UnaryClientInterceptor) Option {
	return func(o *options) error {
		if i == nil {
			return errors.New("descriptor: nil interceptor")
		}
		o.interceptors = append(o.interceptors, i)
		return nil
	}
}

// WithPropagator sets how a call sends the trace context of the OpenTelemetry
// span in its context (trace.SpanContextFromContext) in its metadata, so the
// server's span joins the caller's trace. The default is the application's
// global propagator (otel.GetTextMapPropagator) when one is set, read on every
// call, else W3C Trace Context (propagation.TraceContext{}: traceparent and
// tracestate). propagation.NewCompositeTextMapPropagator(), with no propagators,
// turns the propagation off. A call whose context has no valid span context
// sends none, and keys the caller put in the outgoing metadata itself (for
// example a traceparent) are never overwritten.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(o *options) error {
		if p == nil {
			return errors.New("descriptor: nil propagator")
		}
		o.propagator = p
		return nil
	}
}

// WithDialOptions passes options to grpc.NewClient after the client's own, so
// they take precedence (for example grpc.WithDefaultServiceConfig).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) error {
		o.dialOptions = append(o.dialOptions, opts...)
		return nil
	}
}

// WithoutRetry turns off the retry policy and the health watch (see the package
// documentation): calls are balanced over every connected address, draining or not.
func WithoutRetry() Option {
	return func(o *options) error {
		o.noRetry = true
		return nil
	}
}

func (o *options) tls() (*tls.Config, error) {
	if o.tlsConfig == nil && o.tlsFiles == nil {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.tlsConfig != nil {
		cfg = o.tlsConfig
	}
	if f := o.tlsFiles; f != nil {
		if f.ca != "" {
			pem, err := os.ReadFile(f.ca)
			if err != nil {
				return nil, fmt.Errorf("descriptor: TLS CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("descriptor: TLS CA %s: no PEM certificate", f.ca)
			}
			cfg.RootCAs = pool
		}
		if f.cert != "" {
			pair, err := tls.LoadX509KeyPair(f.cert, f.key)
			if err != nil {
				return nil, fmt.Errorf("descriptor: TLS client certificate: %w", err)
			}
			cfg.Certificates = append(cfg.Certificates, pair)
		}
	}
	if o.serverName != "" {
		cfg.ServerName = o.serverName
	}
	return cfg, nil
}

func (o *options) bearer() string {
	if o.token != nil {
		return *o.token
	}
	return os.Getenv("DESCRIPTOR_TOKEN")
}
