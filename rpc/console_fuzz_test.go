package rpc_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/otafleet/otafleet/rpc"
)

// FuzzConsoleLogin posts arbitrary bodies as JSON, forms and multipart
// forms to the login endpoint: it never panics and answers 200 with both
// cookies, or 400 or 401 with none; the token as plain JSON or form
// succeeds. (Which other bodies carry the token is the encodings' business:
// percent, JSON and quoted-printable escapes all spell it.)
func FuzzConsoleLogin(f *testing.F) {
	console, err := rpc.NewConsoleAuth(testToken, rpc.ConsoleConfig{}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	mux := http.NewServeMux()
	console.Mount(mux)
	types := []string{"application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b", "text/plain", ""}
	f.Add(uint8(0), []byte(`{"token":"`+testToken+`"}`))
	f.Add(uint8(1), []byte("token="+testToken))
	f.Add(uint8(2), []byte("--b\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n"+testToken+"\r\n--b--\r\n"))
	f.Add(uint8(0), []byte(`{"token":1}`))
	f.Add(uint8(1), []byte("token=%zz"))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		req := httptest.NewRequest(http.MethodPost, rpc.LoginPath, bytes.NewReader(body))
		if ct := types[int(kind)%len(types)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		cookies := rec.Result().Cookies()
		switch rec.Code {
		case http.StatusOK:
			if len(cookies) != 2 {
				t.Fatalf("login accepted %q (cookies %v)", body, cookies)
			}
		case http.StatusBadRequest, http.StatusUnauthorized:
			if bytes.Equal(body, []byte(`{"token":"`+testToken+`"}`)) || bytes.Equal(body, []byte("token="+testToken)) && kind%5 == 1 {
				t.Fatalf("login refused the token: %d", rec.Code)
			}
			if len(cookies) != 0 {
				t.Fatalf("refused login set cookies %v", cookies)
			}
		default:
			t.Fatalf("login answered %d for %q", rec.Code, body)
		}
	})
}
