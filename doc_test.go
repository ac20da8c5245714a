package httpfx_test

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
// with its name.
func TestExportedNamesDocumented(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	p := doc.New(pkgs["httpfx"], "github.com/httpfx/httpfx", 0)
	check := func(name, text string) {
		if text == "" {
			t.Errorf("%s has no doc comment", name)
		}
	}
	for _, v := range append(p.Vars, p.Consts...) {
		check(strings.Join(v.Names, ", "), v.Doc)
	}
	for _, f := range p.Funcs {
		check(f.Name, f.Doc)
	}
	for _, typ := range p.Types {
		check(typ.Name, typ.Doc)
		if !strings.HasPrefix(typ.Doc, typ.Name+" ") {
			t.Errorf("the doc of %s does not start with its name", typ.Name)
		}
		for _, f := range append(typ.Funcs, typ.Methods...) {
			check(typ.Name+"."+f.Name, f.Doc)
		}
		for _, spec := range typ.Decl.Specs {
			st, ok := spec.(*ast.TypeSpec).Type.(*ast.StructType)
			if !ok {
				continue
			}
			for _, field := range st.Fields.List {
				for _, n := range field.Names {
					if n.IsExported() && field.Doc.Text() == "" && field.Comment.Text() == "" {
						t.Errorf("field %s.%s has no doc comment", typ.Name, n.Name)
					}
				}
			}
		}
	}
}
