module localserve/gotemplate

go 1.19
