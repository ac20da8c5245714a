package httpfxtest_test

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// Every exported name, and every field of an exported struct, has a doc comment that starts
// with its name; every type's says whether it is safe for concurrent use and what its zero
// value is.
func TestExportedNamesDocumented(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	p := doc.New(pkgs["httpfxtest"], "github.com/httpfx/httpfx/httpfxtest", 0)
	if !strings.HasPrefix(p.Doc, "Package httpfxtest ") {
		t.Errorf("the package doc does not start with its name")
	}
	check := func(name, text string) {
		if !strings.HasPrefix(text, name+" ") {
			t.Errorf("the doc of %s does not start with its name: %q", name, text)
		}
	}
	for _, v := range append(p.Vars, p.Consts...) {
		t.Errorf("exported %s: the API has no variables or constants", strings.Join(v.Names, ", "))
	}
	for _, f := range p.Funcs {
		check(f.Name, f.Doc)
	}
	for _, typ := range p.Types {
		check(typ.Name, typ.Doc)
		if d := strings.Join(strings.Fields(typ.Doc), " "); !strings.Contains(d, "concurrent use") || !strings.Contains(d, "The zero "+typ.Name) {
			t.Errorf("the doc of %s does not say whether it is safe for concurrent use and what its zero value is", typ.Name)
		}
		for _, f := range append(typ.Funcs, typ.Methods...) {
			check(f.Name, f.Doc)
		}
		for _, spec := range typ.Decl.Specs {
			st, ok := spec.(*ast.TypeSpec).Type.(*ast.StructType)
			if !ok {
				continue
			}
			for _, field := range st.Fields.List {
				for _, n := range field.Names {
					if n.IsExported() && !strings.HasPrefix(field.Doc.Text(), n.Name+" ") {
						t.Errorf("the doc of field %s.%s does not start with its name", typ.Name, n.Name)
					}
				}
			}
		}
	}
}
